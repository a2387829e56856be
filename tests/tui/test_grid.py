"""The layer grid as a user reads it: the mode and selection in words, group and index apart, the order
the blocks actually run, and each block's share of the step time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from textual.pilot import Pilot

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.widgets.layer_grid import LayerGrid
from tests.tui.pilot import drive
from tests.tui.pilot import offline_app as make_app
from tests.tui.stub_engine import StubEngine


def lines(grid: LayerGrid) -> list[str]:
    return [grid.render_line(y).text for y in range(grid.size.height)]


def test_visual_mode_and_the_selection_are_shown_and_an_edit_ends_the_mode(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        assert lines(grid)[0].strip() == "cursor double 0"
        await pilot.press("down", "right", "v", "right", "right")
        assert lines(grid)[0].strip() == "selection single 1-3 (3 blocks)  VISUAL: moves extend, v ends"
        await pilot.press("s")
        assert app.plan.order("single") == (0, 4, 5, 6, 7)
        assert not grid.visual and lines(grid)[0].strip() == "selection single 1-3 (3 blocks)"
        await pilot.press("right")  # no longer extends: the cursor moves alone
        assert lines(grid)[0].strip() == "cursor single 4"

    drive(app, scenario)


def test_an_edit_that_changes_nothing_on_one_block_says_why(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        for key, verb in (("m", "Middle-repeat"), ("p", "Parallel"), ("r", "Reverse")):
            app.clear_notifications()
            await pilot.press(key)
            await pilot.pause()
            said = [n.message for n in app._notifications]
            assert any(f"{verb} double 0: on one block it changes nothing" in m for m in said), said
            assert app.plan == plans.Plan()

    drive(app, scenario)


def test_group_and_index_are_drawn_apart(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        row = 1 + next(y for y, text in enumerate(lines(grid)) if text.startswith("single  8 blocks"))
        segments = [s for s in grid.render_line(row) if s.text.strip()]
        glyph, index = segments[0], segments[1]  # single 0: its group's letter, then its index
        assert len(glyph.text) == 1 and glyph.text in "SF"
        assert index.text.startswith(" 0")
        assert glyph.style is not None and index.style is not None
        assert glyph.style.bgcolor != index.style.bgcolor  # the glyph sits on a darker shade

    drive(app, scenario)


def test_the_order_strip_shows_how_the_blocks_run(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        assert not any("runs " in text for text in lines(grid))  # an unchanged model: no strip
        app.set_plan(plans.Plan().with_order("single", plans.parse_order("0, 1, [2-3]x3, 6*4, 7-5")))
        await pilot.pause()
        strip = [text.strip() for text in lines(grid) if text.strip().startswith("single runs")]
        groups = app.session.similarity.stack_groups()["single"] if app.session.similarity else None
        assert groups == [(0, 1), (2, 4), (5, 7)]  # the stub engine's analysis: 7-5 lies in one group
        assert strip == ["single runs 0 1 [2 3]×3 6×4 7–5"]

    drive(app, scenario)


def test_block_shares_of_the_step_time_can_be_shown(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        await pilot.press("percent_sign")  # before any run: says where the numbers come from
        await pilot.pause()
        assert any("block timing comes with the first run" in n.message for n in app._notifications)
        grid.set_block_times({"double": (0.1, 0.1, 0.1, 0.1), "single": (0.05,) * 7 + (0.25,)})
        await pilot.press("percent_sign")
        shown = lines(grid)
        double = shown[1 + next(y for y, t in enumerate(shown) if t.startswith("double  4 blocks"))]
        single = shown[1 + next(y for y, t in enumerate(shown) if t.startswith("single  8 blocks"))]
        # A 1.0 s step: each double block 0.1 s, single 7 a quarter of it.
        def cells(line: str, count: int) -> list[str]:  # a cell: glyph, five columns, a gap
            return [line[7 * i + 1 : 7 * i + 6].strip() for i in range(count)]

        assert cells(double, 4) == ["10%"] * 4
        assert cells(single, 8) == ["5%"] * 7 + ["25%"]
        assert "share of a full-model step" in shown[0]

    drive(app, scenario)


def test_an_edit_and_enter_typed_in_one_burst_run_the_edited_plan(tmp_path: Path) -> None:
    """"s" then enter, arriving together (as a fast typist or a paste sends them): the run takes the
    plan with the skip, never the plan before it."""
    from textual import events

    from dit_explore.engine.core import protocol

    source = resolve("tiny-flux")
    runs: list[protocol.Run] = []
    app = ExplorerApp(source, graphics="halfcell", plans_dir=tmp_path / "plans", runs_dir=tmp_path / "runs",
                      engine_factory=lambda: StubEngine(source, runs))

    async def scenario(pilot: Pilot[Any]) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while app.session.client is None or app.session.client.hello is None:
            assert asyncio.get_running_loop().time() < deadline
            await pilot.pause(0.02)
        for key, character in (("down", None), ("s", "s"), ("enter", "\r")):  # queued back to back
            app.post_message(events.Key(key, character))
        while not runs:
            assert asyncio.get_running_loop().time() < deadline
            await pilot.pause(0.02)
        assert plans.loads(runs[0].plan).order("single") == (1, 2, 3, 4, 5, 6, 7)

    drive(app, scenario)
