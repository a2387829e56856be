"""`python -m engine MODEL`: the engine process (see engine/server.py)."""

from __future__ import annotations

import sys

from engine.server import main

sys.exit(main())
