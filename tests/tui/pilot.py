"""Driving the explorer under Textual's Pilot: one app builder against the stub engine, one wait, one
runner, shared by the TUI test files."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot

from dit_explore.engine.core import protocol
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from tests.tui.stub_engine import StubEngine

SIZE = (140, 44)
Scenario = Callable[[Pilot[Any]], Coroutine[Any, Any, None]]


def offline_app(tmp_path: Path, model: str = "tiny-flux", runs: list[protocol.Run] | None = None,
                sweep_from: Path | None = None, **kwargs: Any) -> ExplorerApp:
    """The explorer on MODEL with a StubEngine (which records the runs it is sent in `runs`, and answers a
    sweep with the folder `sweep_from`)."""
    source = resolve(model)
    kwargs.setdefault("engine_factory", lambda: StubEngine(source, runs, sweep_from=sweep_from))
    return ExplorerApp(source, graphics="halfcell", plans_dir=tmp_path / "plans", runs_dir=tmp_path / "runs",
                       **kwargs)


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 30.0,
                step: float = 0.02) -> None:
    """Let the app run until CONDITION holds; fail after TIMEOUT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(step)


async def engine_said_hello(pilot: Pilot[Any], app: ExplorerApp) -> None:
    await until(pilot, lambda: app.session.client is not None and app.session.client.hello is not None)


def drive(app: App[Any], scenario: Scenario, size: tuple[int, int] = SIZE, *, hello: bool = False,
          notifications: bool = False) -> None:
    """Run SCENARIO against APP at SIZE; with HELLO, first wait for the engine's hello."""
    async def main() -> None:
        async with app.run_test(size=size, notifications=notifications) as pilot:
            if hello:
                assert isinstance(app, ExplorerApp)
                await engine_said_hello(pilot, app)
                await pilot.pause()
            await scenario(pilot)

    asyncio.run(main())
