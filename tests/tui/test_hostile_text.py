"""Text from files the user opens reaches the screen as text: markup in a plan is not markup, control
characters are escaped, and a request too large to frame is reported, never fatal."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from dit_explore.engine.core import protocol
from dit_explore.engine.core.plan import Sampling
from dit_explore.tui.client import EngineClient, EngineError
from tests.tui.pilot import drive, offline_app, until

HOSTILE = 'version = 1\nname = "[link=http://x]click[/link] [@click=app.quit]q[/] \\u001b]0;owned\\u0007"\n' \
          '[order]\nsingle = "0-99"\n'


def test_a_plan_quoting_markup_and_escapes_is_shown_as_text(tmp_path: Path) -> None:
    plan = tmp_path / "hostile.plan.toml"
    plan.write_text(HOSTILE)
    app = offline_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.clear_notifications()
        app._open(str(plan))  # the open dialog's result: a plan that does not fit the model
        await until(pilot, lambda: any("does not fit" in str(n.message) for n in app._notifications))
        message = str(next(iter(app._notifications)).message)
        assert "'99'" in message or "99" in message  # the problem is said
        app.notify("[link=http://x]click[/link] [@click=app.quit]q[/] \x1b]0;owned\x07 [10-28]x3", severity="error")
        await pilot.pause()
        shown = [n for n in app._notifications if "owned" in str(n.message)]
        assert len(shown) == 1
        from textual.content import Content

        # the toast's text, as Textual renders it: the markup and the escape are there as plain characters
        plain = Content.from_markup(str(shown[0].message)).plain
        assert plain == "[link=http://x]click[/link] [@click=app.quit]q[/] \\x1b]0;owned\\x07 [10-28]x3"
        assert app.is_running

    drive(app, scenario, hello=True, notifications=True)


def test_a_request_too_large_to_frame_is_an_engine_error_not_a_crash() -> None:
    client = EngineClient("tiny-flux")
    huge = protocol.Run(job=1, plan="version = 1\n" + "#" * (5 << 20) + "\n", prompts=("p",), sampling=Sampling())

    async def main() -> None:
        with pytest.raises(EngineError, match=r"cannot send this run request: frame too large"):
            await client.send(huge)

    asyncio.run(main())


def test_save_as_refuses_a_name_that_could_not_be_opened_again(tmp_path: Path) -> None:
    from textual.widgets import Input, Label

    from dit_explore.tui.screens.dialogs import AskDialog

    app = offline_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.action_save_as()
        await until(pilot, lambda: isinstance(app.screen, AskDialog) and bool(app.screen.query("#answer")))
        field = app.screen.query_one("#answer", Input)
        field.value = "n" * 201
        field.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, AskDialog)  # the dialog stays, saying why
        assert "at most 200 characters (this is 201)" in str(app.screen.query_one(".error", Label).render())
        assert not (tmp_path / "plans").exists()

    drive(app, scenario, hello=True)
