"""The explorer on a toy model says which words of the prompt the model never saw, and runs anyway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from dit_explore.engine.core import protocol
from tests.tui.pilot import drive, offline_app, until


def test_a_strange_word_is_named_and_the_run_still_goes(tmp_path: Path) -> None:
    runs: list[protocol.Run] = []
    app = offline_app(tmp_path, model="toy-flux", runs=runs)

    async def scenario(pilot: Pilot[Any]) -> None:
        assert app.query_one("#prompt", Input).value == "a large red circle at the top left"  # the default
        app.query_one("#prompt", Input).value = "a lighthouse at the top"
        said: list[str] = []
        shown = app.notify
        app.notify = lambda message, **kw: (said.append(message), shown(message, **kw))[1]  # type: ignore[method-assign]
        await app.action_run()
        await until(pilot, lambda: len(runs) == 1)
        assert any("toy-flux never saw 'lighthouse': it draws" in m for m in said), said
        assert runs[0].prompts == ("a lighthouse at the top",)

    drive(app, scenario, hello=True, notifications=True)


def test_editing_the_prompt_shows_the_toy_vocabulary_and_marks_unseen_words(tmp_path: Path) -> None:
    """While the prompt has focus, a toy's form shows the grammar it knows; a word it never saw turns the
    line into the warning naming it; leaving the prompt hides the line. An open-vocabulary model shows none."""
    from textual.widgets import Static

    app = offline_app(tmp_path, model="toy-flux")

    async def scenario(pilot: Pilot[Any]) -> None:
        line = app.query_one("#vocabulary", Static)
        assert not line.display  # the grid has focus: nothing
        await pilot.press("e")  # edit the prompt
        await pilot.pause()
        assert line.display and not line.has_class("-unseen")
        text = str(line.render())
        for word in ("small/large", "red/green/blue/yellow/cyan/magenta", "circle/square/triangle", "bottom right"):
            assert word in text, text
        await pilot.press("space", "z", "e", "b", "r", "a")
        await pilot.pause()
        assert line.display and line.has_class("-unseen")
        assert "toy-flux never saw 'zebra'" in str(line.render())
        await pilot.press("escape")  # back to the grid
        await pilot.pause()
        assert not line.display

    drive(app, scenario, hello=True)

    open_model = offline_app(tmp_path / "open", model="tiny-flux")

    async def none_shown(pilot: Pilot[Any]) -> None:
        await pilot.press("e", "z")
        await pilot.pause()
        assert not open_model.query_one("#vocabulary").display

    drive(open_model, none_shown, hello=True)
