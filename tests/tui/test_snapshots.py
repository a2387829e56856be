"""SVG snapshots of what the user sees (halfcell images, fixed terminal size, a deterministic stub engine).

Update after an intended change with `python -m pytest tests/tui/test_snapshots.py --snapshot-update`,
then look at the SVGs in tests/tui/__snapshots__/ before committing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from tests.tui.stub_engine import StubEngine

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


def test_palette_offers_actions_by_category(tmp_path: Path) -> None:
    """ctrl+p lists every applicable action as "category: Verb" (undo only once there is something to undo)."""
    import asyncio

    from textual.command import CommandPalette
    from textual.widgets import OptionList

    app = flux_app(tmp_path)

    async def until(pilot: Any, condition: Any) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "the palette never showed what was expected"
            await pilot.pause(0.02)

    def shown() -> list[str]:
        options = app.screen.query_one(OptionList)
        return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]

    async def titles(pilot: Any, query: str) -> list[str]:
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*query)
        # The palette searches in the background: wait for this query's results, then one more frame.
        await until(pilot, lambda: any(title.startswith(f"{query}:") for title in shown()))
        await pilot.pause()
        found = shown()
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CommandPalette))
        return found

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            found = " | ".join(await titles(pilot, "plan"))
            assert "plan: Skip selection (double 0)" in found and "plan: Looped parallel" in found
            assert "plan: Undo" not in found
            await pilot.press("s")
            found = " | ".join(await titles(pilot, "plan"))
            assert "plan: Undo" in found and "plan: Clear" in found
            found = " | ".join(await titles(pilot, "engine"))
            assert "engine: Restart" in found and "engine: Run plan" in found and "engine: Cancel run" not in found
            found = " | ".join(await titles(pilot, "file"))
            assert "file: Save plan as…" in found and "file: Open plan…" in found

    asyncio.run(scenario())


def test_heatmap_screen(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=SIZE, press=["_", "t", "_"])
