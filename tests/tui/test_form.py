"""The prompt and sampling fields as a user meets them: text and cursor always visible, enter runs,
escape goes back to the grid, and every value is checked as it is typed (and never saved invalid)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from textual.pilot import Pilot
from textual.widgets import Input, Static

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.widgets.layer_grid import LayerGrid
from tests.tui.pilot import drive, offline_app, until
from tests.tui.stub_engine import StubEngine


def make_app(tmp_path: Path, runs: list[protocol.Run]) -> ExplorerApp:
    return offline_app(tmp_path, "tiny-sd3", runs)  # 8-pixel patches, at most 256 px a side


def shown(field: Input) -> str:
    """What the field draws: its one line of text."""
    return field.render_line(0).text


def test_a_focused_or_invalid_field_still_shows_its_text_and_cursor(tmp_path: Path) -> None:
    app = make_app(tmp_path, [])

    async def scenario(pilot: Pilot[Any]) -> None:
        prompt = app.query_one("#prompt", Input)
        await pilot.press("e")  # edit the prompt: focus, cursor at the end, nothing selected
        assert app.focused is prompt
        assert prompt.cursor_position == len(prompt.value) and prompt.selection.is_empty
        assert prompt.region.height == 1 and prompt.value[:20] in shown(prompt)
        await pilot.press("!", "?")
        assert prompt.value.endswith("dusk, waves breaking, warm light in the window!?")  # typed at the end
        width = app.query_one("#width", Input)
        width.focus()
        width.value = "65"
        await pilot.pause()
        assert width.has_class("-problem") and width.region.height == 1 and "65" in shown(width)

    drive(app, scenario, hello=True)


def test_enter_in_any_field_runs_and_escape_returns_to_the_grid(tmp_path: Path) -> None:
    runs: list[protocol.Run] = []
    app = make_app(tmp_path, runs)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.press("e", "enter")
        await until(pilot, lambda: len(runs) == 1)
        app.query_one("#seed", Input).focus()
        app.query_one("#seed", Input).value = "11"
        await pilot.press("enter")
        await until(pilot, lambda: len(runs) == 2)
        assert runs[1].sampling.seed == 11
        await pilot.press("escape")
        assert isinstance(app.focused, LayerGrid)

    drive(app, scenario, hello=True)


def test_values_are_checked_as_typed_and_never_run_or_saved_invalid(tmp_path: Path) -> None:
    runs: list[protocol.Run] = []
    app = make_app(tmp_path, runs)

    async def scenario(pilot: Pilot[Any]) -> None:
        problems = app.query_one("#problems", Static)
        for key, value, reason in (("width", "65", "width 65 is not a multiple of 8"),
                                   ("height", "4096", "height 4096 is larger than tiny-sd3 supports (256)"),
                                   ("height", "100000", "must be at most 16384"),
                                   ("steps", "0", "must be at least 1"),
                                   ("steps", "1001", "must be at most 1000"),
                                   ("guidance", "-1", "must be a finite number >= 0")):
            field = app.query_one(f"#{key}", Input)
            before = field.value
            field.value = value
            await pilot.pause()
            assert field.has_class("-problem"), key
            assert reason in str(problems.render()), (key, str(problems.render()))
            await pilot.press("ctrl+s")  # never saved with an invalid value
            await pilot.pause()
            assert not list((tmp_path / "plans").glob("*.plan.toml"))
            await pilot.press("enter")  # the grid has focus: enter runs, and is refused
            await pilot.pause()
            assert runs == []
            field.value = before
            await pilot.pause()
            assert not field.has_class("-problem") and str(problems.render()) == ""
        app.query_one("#width", Input).value = ""  # empty: the model's default, valid
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: len(list((tmp_path / "plans").glob("*.plan.toml"))) == 1)
        saved = plans.load(next((tmp_path / "plans").glob("*.plan.toml")))
        assert saved.sampling.width is None and saved.sampling.height == 64

    drive(app, scenario, hello=True)


def test_a_size_that_would_not_fit_in_the_engines_memory_is_refused_as_typed(tmp_path: Path) -> None:
    """The engine said how much a request may use (its `ready`): the form checks the memory estimate of the
    size being typed against it (engine/core/memory.py), with the largest size that fits."""
    from dit_explore.engine.core.memory import estimate

    source = resolve("tiny-flux")
    runs: list[protocol.Run] = []
    fits = estimate(source, 128, 128, guidance=0.0, dtype="bfloat16", device_kind="cuda",
                    max_sequence_length=32).need(loaded=True)
    app = ExplorerApp(source, graphics="halfcell", plans_dir=tmp_path / "plans", runs_dir=tmp_path / "runs",
                      engine_factory=lambda: StubEngine(source, runs, available=fits))

    async def scenario(pilot: Pilot[Any]) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while app.session.ready is None:
            assert asyncio.get_running_loop().time() < deadline
            await pilot.pause(0.02)
        width, height = app.query_one("#width", Input), app.query_one("#height", Input)
        width.value, height.value = "128", "128"
        await pilot.pause()
        assert not width.has_class("-problem")
        width.value, height.value = "1024", "1024"
        await pilot.pause()
        shown = str(app.query_one("#problems", Static).render())
        assert width.has_class("-problem") and "1024x1024 needs" in shown and "the GPU has" in shown
        assert "at most about 1" in shown  # the largest size that fits, 128 or a little more
        await pilot.press("escape", "enter")
        await pilot.pause()
        assert runs == []

    drive(app, scenario, hello=True)
