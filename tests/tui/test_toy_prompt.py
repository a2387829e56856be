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
