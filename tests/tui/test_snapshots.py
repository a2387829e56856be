"""SVG snapshots of what the user sees (halfcell images, fixed terminal size, a deterministic stub engine).

Update after an intended change with `python -m pytest tests/tui/test_snapshots.py --snapshot-update`,
then look at the SVGs in tests/tui/__snapshots__/ before committing them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from tests.tui.stub_engine import StubEngine
from tests.tui.sweeps import write_sweep

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


async def settled(pilot: Any) -> None:
    """The stub engine ready and its analysis in (the grid colored by group), and no message left: the
    same screen on every machine."""
    app = pilot.app
    deadline = asyncio.get_running_loop().time() + 30
    while app.session.similarity is None:
        assert asyncio.get_running_loop().time() < deadline, "the stub engine's analysis never landed"
        await pilot.pause(0.02)
    await pilot.pause()
    app.clear_notifications()
    await pilot.pause()


def test_main_screen(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=SIZE, run_before=settled)


# The sizes people have: 80x24 and 100x30 and 120x36 show one view at a time (the plan first), 200x60 both.
SIZES = [(80, 24), (100, 30), (120, 36), (200, 60)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_main_screen_at_size(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES[:3], ids=[f"{w}x{h}" for w, h in SIZES[:3]])
def test_images_view_at_size(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    """f2: the images, the engine status and the history, full width."""
    assert snap_compare(flux_app(tmp_path), terminal_size=size, run_before=settled, press=["f2"])


def test_too_small(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=(79, 24), run_before=settled)


def test_messages_at_80x24(snap_compare: Any, tmp_path: Path) -> None:
    """Messages take the top line, right-aligned, over the title: two at most, an error wrapped whole."""

    async def two_messages(pilot: Any) -> None:
        await settled(pilot)
        app = pilot.app
        app.notify("saved saved_plans/flux-schnell-20250101-120000.plan.toml", title="plan saved")
        app.notify("the engine exited with code 1: CUDA out of memory\nlog: ~/.cache/dit-explore/logs/e.log",
                   title="engine crashed", severity="error", timeout=20)
        await pilot.pause(0.1)

    assert snap_compare(flux_app(tmp_path), terminal_size=(80, 24), run_before=two_messages)


def test_help_screen(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=SIZE, run_before=settled, press=["f1", "_"])


def test_plan_with_every_operation(snap_compare: Any, tmp_path: Path) -> None:
    plan = plans.loads(EVERY_OP)
    # the cursor on single 12, a selection 10-14 (shown in the selection color)
    keys = ["down", "down", "down", "right", "right", "right", "shift+right", "_"]
    assert snap_compare(flux_app(tmp_path, plan), terminal_size=SIZE, run_before=settled, press=keys)


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


def test_importance_overlay_at_80x24(snap_compare: Any, tmp_path: Path) -> None:
    """After a skip-each sweep (a hand-made one here, opened as a folder): each cell shaded by what
    leaving its block out costs, the cursor's block's PSNR in the grid's first line."""
    source = resolve("flux-schnell")
    # By hand, the shape sweeps show: the first blocks costly, the middle cheap, one item failed.
    psnr: dict[str, list[float | str | None]] = {
        "double": [11.0, 16.0] + [24.0 + (k % 4) * 2.5 for k in range(2, 18)] + [19.0],
        "single": [18.0] + [30.0 + (k % 5) * 2.0 for k in range(1, 36)] + ["out of memory (a batch of 1)", 22.0],
    }
    folder = write_sweep(tmp_path / "sweep", "flux-schnell", source.layout, psnr)

    async def overlay(pilot: Any) -> None:
        await settled(pilot)
        app = pilot.app
        app._open(str(folder))
        deadline = asyncio.get_running_loop().time() + 30
        while app.query_one("#grid").importance is None:
            assert asyncio.get_running_loop().time() < deadline, "the sweep never showed"
            await pilot.pause(0.02)
        await pilot.pause()
        app.clear_notifications()
        await pilot.pause()

    assert snap_compare(flux_app(tmp_path), terminal_size=(80, 24), run_before=overlay)


def test_heatmap_screen(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(flux_app(tmp_path), terminal_size=SIZE, run_before=settled, press=["t", "_"])
