"""A stand-in for EngineClient where a test needs a deterministic screen (SVG snapshots): it says hello
and ready at once with fixed values and never runs anything. Behavior tests use the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from engine.client import READY, STOPPED
from engine.protocol import Event
from engine.resolve import ModelSource


class StubEngine:
    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.state = STOPPED
        self.log_path = Path("engine.log")
        self.hello: Event | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    @property
    def alive(self) -> bool:
        return self.state != STOPPED

    async def start(self, timeout: float = 60.0) -> Event:
        self.hello = Event("hello", {"layout": self.source.layout.to_json(), "model": self.source.name})
        self._events.put_nowait(self.hello)
        self._events.put_nowait(Event("ready", {"device": "cuda:0", "dtype": "bfloat16", "load_seconds": 12.5,
                                                "random_weights": False}))
        self.state = READY
        return self.hello

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    async def run(self, plan_text: str, prompts: list[str], sampling: Any = None, **kwargs: Any) -> int:
        raise AssertionError("the stub engine does not run plans")

    async def cancel(self, job: int | None = None) -> None:
        return None

    async def shutdown(self, timeout: float = 5.0) -> int | None:
        self.state = STOPPED
        return 0
