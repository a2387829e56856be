"""SVG snapshots of what the user sees (halfcell images, fixed terminal size, a deterministic stub engine).

Update after an intended change with `python -m pytest tests/tui/test_snapshots.py --snapshot-update`,
then look at the SVGs in tests/tui/__snapshots__/ before committing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does

from engine import plan as plans
from engine.resolve import resolve
from tests.tui.stub_engine import StubEngine
from tui.app import ExplorerApp

SIZE = (150, 48)
EVERY_OP = """\
version = 1
model = "flux-schnell"
name = "every operation"
[order]
double = "0-2, 4-18"
single = "0, 1*3, 9-2, [10-14]x2, [15-18], 20-37"
"""


def flux_app(tmp_path: Path, plan: plans.Plan | None = None) -> ExplorerApp:
    source = resolve("flux-schnell")
    return ExplorerApp(source, plan=plan, graphics="halfcell", plans_dir=tmp_path / "plans",
                       runs_dir=tmp_path / "runs", engine_factory=lambda: StubEngine(source))


def test_main_screen(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=SIZE, press=["_"])


def test_help_screen(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=SIZE, press=["f1", "_"])


def test_plan_with_every_operation(snap_compare: Any, tmp_path: Path) -> None:
    plan = plans.loads(EVERY_OP)
    # the cursor on single 12, a selection 10-14 (shown in the selection color)
    keys = ["down", "down", "down", "right", "right", "right", "shift+right", "_"]
    assert snap_compare(flux_app(tmp_path, plan), terminal_size=SIZE, press=keys)
