"""Opening and saving plans: the open dialog lists this model's plans first by their names in the plan
folder, the others dimmed with their model (and refuses those that do not fit, saying why); the plan
line says "modified" after edits to a saved plan; ctrl+s never silently replaces a different plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Label, OptionList

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.study import shipped_plans_dir
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.screens.dialogs import ConfirmDialog, OpenDialog
from dit_explore.tui.widgets.layer_grid import LayerGrid
from dit_explore.tui.widgets.plan_bar import PlanBar
from tests.tui.pilot import drive, until
from tests.tui.pilot import offline_app as make_app

SIZE = (140, 44)


def write_plan(path: Path, single: str, *, model: str | None = "tiny-flux", name: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f'model = "{model}"\n' if model else "") + (f'name = "{name}"\n' if name else "")
    path.write_text(f'version = 1\n{head}[order]\nsingle = "{single}"\n')
    return path


def plan_bar(app: ExplorerApp) -> str:
    return str(app.query_one(PlanBar).render())


def notes(app: ExplorerApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


# ---------------------------------------------------------------------------------------------- open


def test_the_open_dialog_lists_this_models_plans_first_and_dims_the_others(tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    write_plan(folder / "my-plan.plan.toml", "0-1, 6-7")
    write_plan(folder / "mine" / "by-hand.plan.toml", "7-0", model=None, name="reversed by hand")
    write_plan(folder / "a-wide-one.plan.toml", "0-30")  # says tiny-flux but cannot run on it
    write_plan(folder / "for-flux.plan.toml", "0-4", model="flux-schnell")  # fits, but another model's
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenDialog))
        dialog = app.screen
        files = dialog.query_one("#files", OptionList)
        rows = [(str(o.prompt), o.disabled) for o in files.options]
        texts = [text for text, _ in rows]
        assert rows[0] == ("plans for tiny-flux", True)
        assert texts[1:3] == ["mine/by-hand  reversed by hand", "my-plan"]
        other_header = texts.index(next(t for t in texts if t.startswith("other models")))
        assert other_header == 3 and rows[3][1]
        others = texts[4:]
        assert others[:2] == ["a-wide-one  [tiny-flux]  ✗ does not fit", "for-flux  [flux-schnell]"]
        shipped = [p.relative_to(shipped_plans_dir()).as_posix().removesuffix(".plan.toml")
                   for p in shipped_plans_dir().rglob("*.plan.toml")]
        assert len(shipped) == 36  # the six strategies of three real models and three toys
        assert sorted(t.split()[0] for t in others[2:]) == sorted(shipped)  # relative names, not paths
        skip_middle = next(i for i, t in enumerate(texts) if t.startswith("flux-schnell/2-skip-middle"))
        assert texts[skip_middle].startswith("flux-schnell/2-skip-middle  [flux-schnell]  ✗ does not fit")
        assert not any("/" in t.split()[0] and t.startswith(str(Path.cwd())) for t in texts)
        for option in files.options[4:]:
            assert isinstance(option.prompt, Text) and option.prompt.style == "dim"
        for option in files.options[1:3]:
            assert isinstance(option.prompt, Text) and option.prompt.style == ""
        # No row wraps: one line per option, the list scrolls.
        assert files.virtual_size.height == len(files.options)
        assert dialog._files[:2] == [(folder / "mine" / "by-hand.plan.toml").resolve(),  # type: ignore[attr-defined]
                                     (folder / "my-plan.plan.toml").resolve()]

        # A plan that does not fit is refused in the dialog, with the reason; the dialog stays.
        files.focus()
        files.highlighted = skip_middle
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog
        refused = str(dialog.query_one("#refused", Label).render())
        assert "a plan for flux-schnell does not fit tiny-flux" in refused and "out of range" in refused
        assert app.plan == plans.Plan()
        # One that fits another model's layout opens (with a warning that it was written for another).
        files.highlighted = texts.index("for-flux  [flux-schnell]")
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, OpenDialog))
        assert app.plan.order("single") == (0, 1, 2, 3, 4) and "written for flux-schnell" in notes(app)
        # This model's own plan opens.
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenDialog))
        await pilot.press("down", "enter")  # the first row is a heading; down lands on the second plan
        await until(pilot, lambda: not isinstance(app.screen, OpenDialog))
        assert app.plan.order("single") == (0, 1, 6, 7)

    drive(app, scenario)


def test_opening_another_models_plan_that_does_not_fit_says_why(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app._open(str(shipped_plans_dir() / "flux-schnell" / "2-skip-middle.plan.toml"))
        await pilot.pause()
        assert app.plan == plans.Plan()
        assert "a plan for flux-schnell does not fit tiny-flux" in notes(app)
        assert "block index out of range" in notes(app)

    drive(app, scenario)


# ---------------------------------------------------------------------------------------------- save


def test_a_saved_plan_shows_modified_after_edits(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.query_one(LayerGrid).select("single", 2, 5)
        await pilot.press("s", "ctrl+s")  # an unnamed plan: saved under a generated name
        saved = list((tmp_path / "plans").glob("*.plan.toml"))
        assert len(saved) == 1 and app.plan.name and saved[0].name.startswith("tiny-flux-")
        assert app.plan.name in plan_bar(app) and "modified" not in plan_bar(app)
        assert saved[0].name in plan_bar(app)
        app.query_one(LayerGrid).select("single", 0, 0)
        await pilot.press("s")  # another edit
        assert app.plan.order("single") == (1, 6, 7) and "modified" in plan_bar(app)
        await pilot.press("u")  # back to what was saved
        assert "modified" not in plan_bar(app)
        await pilot.press("s", "ctrl+s")  # saving the edit asks (the file holds the plan as it was)
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("down", "enter")  # overwrite
        await until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert "modified" not in plan_bar(app)
        assert plans.load(saved[0]).order("single") == app.plan.order("single")

    drive(app, scenario)


def test_ctrl_s_never_silently_overwrites_a_different_plan(tmp_path: Path) -> None:
    theirs = write_plan(tmp_path / "plans" / "mine.plan.toml", "0-3", name="mine")
    before = theirs.read_text()
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.set_plan(plans.Plan(name="mine").with_order("single", plans.parse_order("4-7")))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        answers = [str(o.prompt) for o in dialog.query_one(OptionList).options]
        assert answers == ["save under a new name: mine-2.plan.toml", "overwrite mine.plan.toml",
                           "cancel (escape)"]
        assert "other blocks" in str(dialog.query_one(".message", Label).render())
        await pilot.press("escape")  # nothing written
        await until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert theirs.read_text() == before and sorted(p.name for p in theirs.parent.iterdir()) == ["mine.plan.toml"]

        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("enter")  # the first answer: a new name
        await until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert theirs.read_text() == before
        renamed = theirs.parent / "mine-2.plan.toml"
        assert plans.load(renamed).order("single") == (4, 5, 6, 7) and app.plan.name == "mine (2)"

        await pilot.press("ctrl+s")  # the same plan again: saved, no question
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmDialog)
        assert sorted(p.name for p in theirs.parent.iterdir()) == ["mine-2.plan.toml", "mine.plan.toml"]

        app.set_plan(plans.Plan(name="mine").with_order("single", plans.parse_order("5-7")))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        answers = [str(o.prompt) for o in app.screen.query_one(OptionList).options]
        assert answers[0] == "save under a new name: mine-3.plan.toml"  # mine-2 holds another plan now
        await pilot.press("down", "enter")  # overwrite, asked for
        await until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert plans.load(theirs).order("single") == (5, 6, 7)

    drive(app, scenario)


# -------------------------------------------------------------------------------- per-step plans

PER_STEP = """\
version = 2
model = "tiny-flux"
name = "per step"
[order]
single = "0-1, 6-7"
[[steps]]
steps = "0"
[steps.order]
double = "3-0"
[[steps]]
steps = "2"
[steps.order]
[sampling]
steps = 3
"""


def grid_text(app: ExplorerApp) -> list[str]:
    grid = app.query_one(LayerGrid)
    return [grid.render_line(y).text.rstrip() for y in range(grid.size.height)]


def test_a_per_step_plan_opens_shows_its_default_order_and_runs_as_written(tmp_path: Path) -> None:
    """ctrl+o on a plan with step tables: the grid shows the default order with a line saying the tables
    run as written and edits change the default order; the plan line lists the tables; an edit keeps them;
    the run request carries them; clear removes them (undoable)."""
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "per-step.plan.toml").write_text(PER_STEP)
    runs: list[protocol.Run] = []
    app = make_app(tmp_path, runs=runs)
    opened = replace(plans.loads(PER_STEP), sampling=plans.Sampling())

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenDialog))
        files = app.screen.query_one("#files", OptionList)
        assert str(files.options[1].prompt) == "per-step  per step"
        files.highlighted = 1
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, OpenDialog))
        assert app.plan == opened
        grid = app.query_one(LayerGrid)
        note = ("default order shown · 2 step tables (steps 0, 2) run as written; edits change the default order")
        assert grid.steps_note() == note
        lines = grid_text(app)
        assert lines[1] == note[: len(lines[1])] and lines[1].startswith("default order shown · 2 step tables")
        assert lines[2].startswith("double  4 blocks · unchanged") and any(
            line.startswith("single  8 blocks · edited") for line in lines)
        bar = plan_bar(app)
        assert "steps  0  double: 3-0\n" in bar and "steps  2  full model\n" in bar
        assert "single  0-1, 6-7" in bar and "8 / 12 block executions per step (default order)" in bar

        grid.select("single", 0, 0)
        await pilot.press("s")  # edits the default order; the tables stay
        assert app.plan.order("single") == (1, 6, 7) and app.plan.step_orders == opened.step_orders
        assert "modified" in plan_bar(app)

        await app.action_run()
        await until(pilot, lambda: len(runs) == 1)
        sent = plans.loads(runs[0].plan)
        assert sent == replace(app.plan, sampling=plans.Sampling()) and len(sent.step_orders) == 2
        assert runs[0].plan.startswith("version = 2\n") and runs[0].sampling.steps == 3

        await pilot.press("c")  # clear: every block runs normally at every step
        assert app.plan.orders == () and app.plan.step_orders == ()
        assert not grid_text(app)[1].startswith("default order shown")
        await pilot.press("u")
        assert app.plan.step_orders == opened.step_orders

    drive(app, scenario, hello=True)


BRANCHED = """version = 2
name = "slg"

[order]
double = "0-3, 5"

[uncond]
steps = "0"

[extra]
scale = 2.8
steps = "1-2"
[extra.order]
double = "0-1, 4-5"
"""


def test_a_guidance_branch_plan_says_the_grid_edits_the_conditional_pass(tmp_path: Path) -> None:
    """A plan with [uncond] and [extra] on tiny-sd3: the grid's note says it shows the conditional pass and
    that the branches run as written; the plan line lists each branch with its window and scale and
    counts the conditional pass's cost; an edit keeps the branches and the run request carries them."""
    path = tmp_path / "slg.plan.toml"
    path.write_text(BRANCHED)
    runs: list[protocol.Run] = []
    app = make_app(tmp_path, model="tiny-sd3", runs=runs)

    async def scenario(pilot: Pilot[Any]) -> None:
        app._open(str(path))
        await until(pilot, lambda: app.plan.extra is not None)
        grid = app.query_one(LayerGrid)
        note = ("conditional pass shown · [uncond] steps 0, [extra] ×2.8 steps 1-2 run as written; edits change "
                "the default order")
        assert grid.steps_note() == note
        assert grid_text(app)[1] == note[: len(grid_text(app)[1])]
        bar = plan_bar(app)
        assert " uncond  steps 0  full model\n" in bar and "  extra ×2.8  steps 1-2  double: 0-1, 4-5\n" in bar
        assert "5 / 6 block executions per step (the conditional pass)" in bar
        grid.select("double", 0, 0)
        await pilot.press("s")
        assert app.plan.order("double") == (1, 2, 3, 5) and app.plan.extra == plans.loads(BRANCHED).extra
        await app.action_run()
        await until(pilot, lambda: len(runs) == 1)
        sent = plans.loads(runs[0].plan)
        assert sent.uncond == plans.loads(BRANCHED).uncond and sent.extra is not None and sent.extra.scale == 2.8

    drive(app, scenario, hello=True)
