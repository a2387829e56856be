"""The explorer's own decisions, against a stub engine that records what it is asked: the loop-count
dialog's bound, sampling held in one place (the form), the edits registry and user themes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from textual.pilot import Pilot
from textual.widgets import Input

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui import editing
from dit_explore.tui.keys import EDIT_KEYS, EDITS, IDS
from dit_explore.tui.screens.dialogs import AskDialog, OpenDialog
from tests.tui.pilot import drive, until
from tests.tui.pilot import offline_app as make_app


def test_the_loop_count_is_bounded_by_what_the_plan_can_still_take(tmp_path: Path) -> None:
    """All 38 single blocks of flux-schnell: 10,000 executions per step allow 263 loops, not 1000 (which
    used to raise an uncaught PlanError and end the app)."""
    app = make_app(tmp_path, "flux-schnell")
    assert editing.max_loops(plans.Plan(), app.source.layout, "single", 0, 37) == 10_000 // 38 == 263

    async def scenario(pilot: Pilot[Any]) -> None:
        app.query_one("LayerGrid").select("single", 0, 37)  # type: ignore[attr-defined]
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, AskDialog))
        dialog = app.screen
        answer = dialog.query_one(Input)
        answer.value = "1000"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, AskDialog)
        assert "from 1 to 263" in str(dialog.query_one(".error").render())
        answer.value = "263"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, AskDialog))
        assert app.plan.order("single") == (plans.Group(tuple(range(38)), 263),)
        plans.validate(app.plan, app.source.layout)

    drive(app, scenario)


def test_no_room_left_for_a_loop_is_said_not_asked(tmp_path: Path) -> None:
    app = make_app(tmp_path, "flux-schnell")
    # Blocks 0-1 skipped, the rest and block 37 repeated up to the per-step limit: no room for 0-1.
    full = plans.Plan().with_order("single", plans.parse_order("2-36, " + "37*1000, " * 9 + "37*965"))
    assert plans.executions(full.order("single") or ()) == 10_000
    assert editing.max_loops(full, app.source.layout, "single", 0, 1) == 0

    async def scenario(pilot: Pilot[Any]) -> None:
        app.set_plan(full)
        app.query_one("LayerGrid").select("single", 0, 1)  # type: ignore[attr-defined]
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, AskDialog) and app.plan == full

    drive(app, scenario)


def test_an_emptied_field_falls_back_to_the_models_default_not_an_opened_plans(tmp_path: Path) -> None:
    saved = tmp_path / "seven.plan.toml"
    saved.write_text('version = 1\nmodel = "tiny-flux"\n[order]\nsingle = "0-3"\n'
                     '[sampling]\nprompt = "a saved prompt"\nsteps = 7\nseed = 5\n')
    runs: list[protocol.Run] = []
    app = make_app(tmp_path, runs=runs)

    async def scenario(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: app.session.client is not None and app.session.client.hello is not None)
        app._open(str(saved))
        assert app.query_one("#steps", Input).value == "7" and app.query_one("#seed", Input).value == "5"
        assert app.query_one("#prompt", Input).value == "a saved prompt"
        app.query_one("#steps", Input).value = ""  # the user empties the field
        await pilot.press("enter")
        await until(pilot, lambda: len(runs) == 1)

    drive(app, scenario)
    request = runs[0]
    # The form is the one source of sampling: steps is unset (the engine applies the model's default, 2),
    # not the opened plan's 7, because the plan travels without its [sampling] table.
    assert request.sampling == plans.Sampling(seed=5, steps=None, width=64, height=64, guidance=0.0)
    sent = plans.loads(request.plan)
    assert sent.sampling == plans.Sampling() and sent.order("single") == (0, 1, 2, 3)
    assert request.prompts == ("a saved prompt",)


def test_every_edit_is_one_registry_row_and_a_bindable_id() -> None:
    assert [e.id for e in EDITS] == ["skip", "middle-repeat", "reverse", "parallel", "looped-parallel", "restore",
                                    "reuse", "forecast"]
    assert {k.id for k in EDIT_KEYS} <= IDS
    assert [k.action for k in EDIT_KEYS] == [f"edit('{e.id}')" for e in EDITS]
    assert [e.id for e in EDITS if e.asks_loops] == ["looped-parallel"]
    layout = resolve("tiny-flux").layout
    skipped = next(e for e in EDITS if e.id == "skip").apply(plans.Plan(), layout, "single", 2, 5)
    assert skipped.order("single") == (0, 1, 6, 7)


def test_user_themes_load_from_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dit_explore.tui.themes import REQUIRED_VARIABLES, available_themes

    themes = tmp_path / "config" / "dit-explore" / "themes"
    themes.mkdir(parents=True)
    variables = "\n".join(f'{v} = "#123456"' for v in REQUIRED_VARIABLES)
    (themes / "mine.toml").write_text(f'name = "mine"\n[colors]\nprimary = "#abcdef"\n[variables]\n{variables}\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    found = available_themes()
    assert {"dit-dark", "dit-light", "mine"} <= set(found)
    assert found["mine"].primary == "#abcdef" and found["mine"].variables["stack-1"] == "#123456"
    app = make_app(tmp_path, theme="mine")

    async def scenario(pilot: Pilot[Any]) -> None:
        assert app.theme == "mine" and app.theme_variables["stack-2"] == "#123456"

    drive(app, scenario)


def test_the_open_dialog_lists_the_shipped_plans(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenDialog))
        files = app.screen._files  # type: ignore[attr-defined]
        assert len([f for f in files if f.name.endswith(".plan.toml")]) >= 18

    drive(app, scenario)
