"""The explorer app driven by keys (Textual's Pilot) against a real engine process on tiny-flux."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import textual_image.widget  # noqa: F401 - the CLI imports it before the app runs; so do the tests
from textual.pilot import Pilot
from textual.widgets import Input, Static

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.protocol import EngineState
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.screens.dialogs import AskDialog, OpenDialog
from dit_explore.tui.widgets.history_list import HistoryList
from dit_explore.tui.widgets.image_pane import ImageSlot
from dit_explore.tui.widgets.layer_grid import LayerGrid

SIZE = (140, 44)


def make_app(tmp_path: Path, **kwargs: Any) -> ExplorerApp:
    return ExplorerApp(resolve("tiny-flux"), graphics="halfcell", plans_dir=tmp_path / "plans",
                       runs_dir=tmp_path / "runs", **kwargs)


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def drive(app: ExplorerApp, scenario: Callable[[Pilot[Any]], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            try:
                await scenario(pilot)
            finally:
                if app.session.client is not None:
                    await app.session.client.shutdown()

    asyncio.run(main())


def orders(app: ExplorerApp) -> dict[str, str]:
    return {name: plans.format_order(order) for name, order in app.plan.orders}


def static_text(app: ExplorerApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def test_grid_has_focus_with_the_cursor_on_block_0(tmp_path: Path) -> None:
    async def scenario(pilot: Pilot[Any]) -> None:
        grid = pilot.app.query_one(LayerGrid)
        assert pilot.app.focused is grid
        assert grid.selection == ("double", 0, 0)

    drive(make_app(tmp_path), scenario)


def test_edit_keys_give_the_expected_canonical_plans_with_undo_and_redo(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "right", "right", "shift+right", "shift+right", "shift+right")
        assert app.query_one(LayerGrid).selection == ("single", 2, 5)
        await pilot.press("s")
        assert orders(app) == {"single": "0-1, 6-7"}
        await pilot.press("u")
        assert orders(app) == {}
        await pilot.press("ctrl+r")
        assert orders(app) == {"single": "0-1, 6-7"}
        await pilot.press("d")  # restore the selection
        assert orders(app) == {}
        await pilot.press("m")  # center block (2+5)//2 = 3, four times
        assert orders(app) == {"single": "0-1, 3*4, 6-7"}
        await pilot.press("c")
        assert orders(app) == {}
        await pilot.press("r")
        assert orders(app) == {"single": "0-1, 5-2, 6-7"}
        await pilot.press("p")
        assert orders(app) == {"single": "0-1, [2-5], 6-7"}
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, AskDialog))
        await pilot.press("backspace", "0", "enter")  # 0 loops is refused, the dialog stays
        assert isinstance(app.screen, AskDialog)
        await pilot.press("backspace", "4", "enter")
        await until(pilot, lambda: not isinstance(app.screen, AskDialog))
        assert orders(app) == {"single": "0-1, [2-5]x4, 6-7"}
        await pilot.press("escape", "up", "s")  # clear the selection; up from single 5 lands on double 3
        assert orders(app) == {"double": "0-2", "single": "0-1, [2-5]x4, 6-7"}
        await pilot.press("u", "u", "u")
        assert orders(app) == {"single": "0-1, 5-2, 6-7"}
        plan_bar = static_text(app, "#plan-bar")
        assert "0-1, 5-2, 6-7" in plan_bar and "8 / 12" not in plan_bar and "12 / 12" in plan_bar

    drive(app, scenario)


def test_run_shows_plan_baseline_difference_and_timing(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "right", "right", "shift+right", "shift+right", "shift+right", "s", "enter")
        await until(pilot, lambda: any(r.status == "ok" for r in app.session.records.values()))
        record = next(iter(app.session.records.values()))
        assert record.image is not None and record.baseline is not None and record.image.size == (64, 64)
        slots = app.query(ImageSlot)
        assert [s.image is not None for s in slots] == [True, True]
        assert "PSNR" in static_text(app, "#difference")
        timing = static_text(app, "#timing")
        assert "total" in timing and "ms/step" in timing and "predicted 1.50×" in timing
        run = json.loads((record.path / "run.json").read_text())
        assert run["status"] == "ok" and run["plan"]["orders"]["single"] == "0-1, 6-7"
        assert run["images"] == ["000.png"] and run["baseline_images"] == ["baseline-000.png"]

    drive(app, scenario)


def test_escape_cancels_a_running_job(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: app.session.client is not None and app.session.client.state == EngineState.READY)
        app.query_one("#steps", Input).value = "1000"
        await pilot.press("enter")
        await until(pilot, lambda: "step" in static_text(app, "#engine-state"))
        await pilot.press("escape")
        await until(pilot, lambda: any(r.status == "cancelled" for r in app.session.records.values()))
        assert app.session.client is not None and app.session.client.state == EngineState.READY

    drive(app, scenario)


def test_save_and_open_round_trip(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "v", "right", "right", "right", "p")
        assert orders(app) == {"single": "[0-3], 4-7"}
        await pilot.press("ctrl+s")
        saved = list((tmp_path / "plans").glob("*.plan.toml"))
        assert len(saved) == 1 and saved[0].name.startswith("tiny-flux-")
        stored = plans.load(saved[0])
        assert stored.model == "tiny-flux" and stored.order("single") == plans.parse_order("[0-3], 4-7")
        assert stored.sampling.steps == 2 and stored.sampling.prompt
        await pilot.press("c")
        assert orders(app) == {}
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenDialog))
        await pilot.press("tab")  # to the path field
        app.screen.query_one("#path", Input).value = str(saved[0])
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, OpenDialog))
        assert orders(app) == {"single": "[0-3], 4-7"} and app.plan.name == stored.name

    drive(app, scenario)


def test_open_refuses_a_plan_that_does_not_fit_the_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.plan.toml"
    bad.write_text('version = 1\n[order]\nsingle = "0-30"\n')
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app._open(str(bad))
        await pilot.pause()
        assert orders(app) == {}

    drive(app, scenario)


def test_engine_kill_shows_crashed_and_enter_restarts_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: app.session.client is not None and app.session.client.state == EngineState.READY)
        assert app.session.client is not None
        old = app.session.client
        os.kill(old.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await until(pilot, lambda: old.state == EngineState.CRASHED and "crashed" in static_text(app, "#engine-state"))
        await pilot.press("enter")
        await until(pilot, lambda: any(r.status == "ok" for r in app.session.records.values()))
        assert app.session.client is not old and app.session.client.state == EngineState.READY

    drive(app, scenario)


@pytest.mark.parametrize("theme", ["dit-dark", "dit-light"])
def test_themes_provide_the_group_colors(tmp_path: Path, theme: str) -> None:
    app = make_app(tmp_path, theme=theme)

    async def scenario(pilot: Pilot[Any]) -> None:
        variables = app.theme_variables
        assert app.theme == theme
        assert variables["group-first"] == "#D55E00" and variables["stack-2"] == "#56B4E9"

    drive(app, scenario)


def test_grid_recolors_when_the_similarity_analysis_lands(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        assert grid.group_of("single", 0) == ("S", "stack-2")  # colored by stack (position) until analyzed
        await until(pilot, lambda: app.session.similarity is not None)  # runs by itself once the model is ready
        groups = app.session.similarity.stack_groups()
        assert grid.groups == groups
        first, last = groups["single"][0], groups["single"][-1]
        assert grid.group_of("single", first[0]) == ("F", "group-first")
        assert grid.group_of("single", last[1]) == ("L", "group-last")
        assert len(app.session.similarity.prompts) == 5  # the default prompt set
        # g selects the group under the cursor; s then skips it
        await pilot.press("down", "right", "g")
        stack, a, b = grid.selection
        group = next(g for g in groups["single"] if g[0] <= 1 <= g[1])
        assert (stack, a, b) == ("single", group[0], group[1])
        await pilot.press("s")
        kept = [i for i in range(8) if not group[0] <= i <= group[1]]
        assert app.plan.order("single") == tuple(kept)
        await pilot.press("t")
        from dit_explore.tui.screens.heatmap import HeatmapScreen

        await until(pilot, lambda: isinstance(app.screen, HeatmapScreen))
        await pilot.press("t")
        await until(pilot, lambda: not isinstance(app.screen, HeatmapScreen))

    drive(app, scenario)


def test_runs_after_an_engine_restart_keep_plan_prompt_and_history(tmp_path: Path) -> None:
    """run, kill the engine, enter (a new engine runs it), enter again: job ids never repeat, so the history
    takes every run (this used to end the app with DuplicateID), and plan and prompt stay."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "s")  # single 0 skipped
        app.query_one("#prompt", Input).value = "a kept prompt"
        await pilot.press("enter")
        await until(pilot, lambda: [r.status for r in app.session.records.values()] == ["ok"])
        old = app.session.client
        assert old is not None and old.pid is not None
        os.kill(old.pid, signal.SIGKILL)
        await until(pilot, lambda: old.state == EngineState.CRASHED)
        await pilot.press("enter")
        await until(pilot, lambda: [r.status for r in app.session.records.values()] == ["ok", "ok"])
        await pilot.press("enter")
        await until(pilot, lambda: [r.status for r in app.session.records.values()] == ["ok", "ok", "ok"])
        jobs = list(app.session.records)
        assert len(set(jobs)) == 3 and jobs == sorted(jobs)  # analyses take ids too: distinct, increasing
        assert len(app.query_one(HistoryList).records) == 3
        assert orders(app) == {"single": "1-7"} and app.query_one("#prompt", Input).value == "a kept prompt"
        assert app.is_running

    drive(app, scenario)


def test_an_error_in_a_handler_is_reported_and_the_app_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dit_explore.tui import errors

    monkeypatch.setattr(errors, "_LOG_PATH", tmp_path / "tui.log")
    errors.start_logging()
    app = make_app(tmp_path)

    def broken(self: LayerGrid, plan: plans.Plan) -> None:
        raise RuntimeError("the grid could not draw")

    async def scenario(pilot: Pilot[Any]) -> None:
        monkeypatch.setattr(LayerGrid, "set_plan", broken)
        await pilot.press("s")  # the app's edit handler raises inside
        await pilot.pause()
        notes = [n for n in app._notifications]
        assert any("internal error" in n.title + n.message and "the grid could not draw" in n.message
                   for n in notes)
        monkeypatch.undo()
        await pilot.press("down", "s")  # the app still takes keys and edits
        assert app.is_running and orders(app)["single"] == "1-7"

    drive(app, scenario)
    logged = (tmp_path / "tui.log").read_text()
    assert "RuntimeError: the grid could not draw" in logged and "Traceback" in logged
