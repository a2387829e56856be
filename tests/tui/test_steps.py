"""The step × block map and edits on a range of steps (tui/steps.py), against hand-written plans."""

from __future__ import annotations

import pytest

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.plan import Plan, StepTable, parse_order
from dit_explore.tui import editing
from dit_explore.tui.steps import edit_steps, step_map

FLUX = MODELS["toy-flux"].layout  # double 6 + single 12


def loads(text: str) -> Plan:
    plan = plans.loads(text)
    plans.validate(plan, FLUX)
    return plan


def test_the_map_of_a_plan_with_tables_and_cached_spans() -> None:
    plan = loads('version = 2\n[order]\nsingle = "0-3, 4-7@reuse, 9-11"\n'
                 '[[steps]]\nsteps = "2"\n[steps.order]\ndouble = "0, [1-2], 3-5"\n')
    rows = step_map(plan, FLUX, 4)
    # Step 0 computes the cached span; steps 1 and 3 reuse it; step 8 is skipped throughout.
    assert rows[0]["single"] == ["run"] * 8 + ["skip"] + ["run"] * 3
    assert rows[1]["single"] == ["run"] * 4 + ["reuse"] * 4 + ["skip"] + ["run"] * 3
    assert rows[1]["double"] == ["run"] * 6
    assert rows[2]["double"] == ["run", "parallel", "parallel", "run", "run", "run"]
    assert rows[3] == rows[1]
    forecast = step_map(Plan(orders=(("single", parse_order("11-0")),)), FLUX, 1)[0]["single"]
    assert forecast == ["reverse"] * 12


def test_an_edit_on_a_step_range_becomes_a_table() -> None:
    edited = edit_steps(Plan(), FLUX, range(10, 20), 20, editing.skip, "single", 4, 7)
    assert edited.orders == () and edited.step_orders == (StepTable(tuple(range(10, 20)),
                                                                     (("single", parse_order("0-3, 8-11")),)),)
    rows = step_map(edited, FLUX, 20)
    assert rows[9]["single"][4:8] == ["run"] * 4 and rows[10]["single"][4:8] == ["skip"] * 4
    # Restoring the same blocks on the same steps gives back the untouched plan.
    assert edit_steps(edited, FLUX, range(10, 20), 20, editing.restore, "single", 4, 7) == Plan()


def test_edits_on_overlapping_ranges_split_tables_and_keep_the_default() -> None:
    base = loads('version = 1\n[order]\ndouble = "0-4"\n')  # double 5 skipped on every step
    one = edit_steps(base, FLUX, range(0, 4), 8, editing.skip, "single", 10, 11)
    two = edit_steps(one, FLUX, range(2, 6), 8, editing.reverse, "single", 0, 3)
    expected = loads('version = 2\n[order]\ndouble = "0-4"\n'
                     '[[steps]]\nsteps = "0-1"\n[steps.order]\nsingle = "0-9"\n'
                     '[[steps]]\nsteps = "2-3"\n[steps.order]\nsingle = "3-0, 4-9"\n'
                     '[[steps]]\nsteps = "4-5"\n[steps.order]\nsingle = "3-0, 4-11"\n')
    assert two == expected
    plans.validate(two, FLUX)
    plans.validate_steps(two, 8)


def test_active_steps_become_tables_and_the_full_model_steps_stay_full() -> None:
    base = loads('version = 1\nactive_steps = "0-3"\n[order]\nsingle = "0-5"\n')
    edited = edit_steps(base, FLUX, [6], 8, editing.skip, "double", 0, 0)
    assert edited.active_steps is None
    rows = step_map(edited, FLUX, 8)
    assert rows[0]["single"][6:] == ["skip"] * 6 and rows[4]["single"] == ["run"] * 12  # left out: full model
    assert rows[6]["double"][0] == "skip" and rows[6]["single"] == ["run"] * 12
    assert [step_map(base, FLUX, 8)[s] for s in (0, 1, 2, 3, 4, 5, 7)] == [rows[s] for s in (0, 1, 2, 3, 4, 5, 7)]


def test_a_cached_span_on_later_steps_and_bad_ranges() -> None:
    edited = edit_steps(Plan(), FLUX, range(1, 20), 20, editing.cache, "single", 4, 11, mode="forecast")
    plans.validate(edited, FLUX)
    plans.validate_steps(edited, 20)  # step 0 computes it: nothing-to-reuse cannot happen here
    assert step_map(edited, FLUX, 20)[5]["single"][4:] == ["forecast"] * 8
    with pytest.raises(ValueError, match="steps must be in 0-19"):
        edit_steps(Plan(), FLUX, [20], 20, editing.skip, "single", 0, 0)
    assert edit_steps(Plan(), FLUX, [], 20, editing.skip, "single", 0, 0) == Plan()


def test_the_step_view_edits_a_range_of_steps_in_the_app(tmp_path: object) -> None:
    """T opens the map at the form's step count; moves and shift+moves select single 4-11 on steps 10-19;
    s skips them there only (a [[steps]] table), u undoes through the app's history, T closes."""
    from pathlib import Path
    from typing import Any

    from textual.pilot import Pilot

    from dit_explore.tui.screens.steps import StepMap, StepsScreen
    from tests.tui.pilot import drive, offline_app

    app = offline_app(Path(str(tmp_path)), model="toy-flux")

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("T")
        await pilot.pause()
        assert isinstance(app.screen, StepsScreen)
        view = app.screen.query_one(StepMap)
        assert view.steps == 20 and len(view.rows) == 20
        await pilot.press(*["j"] * 10, *["l"] * 10, *["L"] * 7, *["J"] * 9)
        assert view.selection == ("single", 4, 11, range(10, 20))
        await pilot.press("s")
        await pilot.pause()
        assert app.plan.orders == () and app.plan.step_orders == (
            StepTable(tuple(range(10, 20)), (("single", parse_order("0-3")),)),)
        assert view.rows[12]["single"][4:] == ["skip"] * 8 and view.rows[9]["single"] == ["run"] * 12
        await pilot.press("u")
        await pilot.pause()
        assert app.plan == Plan() and view.rows[12]["single"] == ["run"] * 12
        await pilot.press("T")
        await pilot.pause()
        assert not isinstance(app.screen, StepsScreen)

    drive(app, scenario, hello=True)
