"""`python -m dit_explore.engine MODEL`: the engine process (see engine/server.py)."""

from __future__ import annotations

import sys

from dit_explore.engine.server import main

sys.exit(main())
