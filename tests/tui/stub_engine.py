"""A stand-in for EngineClient where a test needs a deterministic screen (SVG snapshots): it says hello
and ready at once with fixed values, answers an analysis with a fixed synthetic matrix (smooth decay with
a dissimilar first block, the shape real DiTs show), and never runs plans. Behavior tests use the real
engine."""

from __future__ import annotations

import asyncio
import math
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

    async def analyze(self, prompts: list[str] | None = None, sampling: Any = None, **kwargs: Any) -> int:
        from engine.similarity import SimilarityResult, StackResult, group_blocks

        order = [(s.name, i) for s in self.source.layout.stacks for i in range(s.blocks)]
        n = len(order)
        matrix = [[1.0 if i == j else 0.35 + 0.6 * math.exp(-abs(i - j) / 5) * (0.5 if 0 in (i, j) else 1.0)
                   for j in range(n)] for i in range(n)]
        stacks, start = {}, 0
        for s in self.source.layout.stacks:
            sub = [row[start : start + s.blocks] for row in matrix[start : start + s.blocks]]
            stacks[s.name] = StackResult(s.blocks, sub, group_blocks(sub))
            start += s.blocks
        result = SimilarityResult(self.source.name, stacks, order, matrix, group_blocks(matrix),
                                  list(prompts or ["p1", "p2", "p3", "p4", "p5"]), 4, 0)
        self._events.put_nowait(Event("analysis", {"job": 1, "cached": True, "result": result.to_json()}))
        self._events.put_nowait(Event("done", {"job": 1, "status": "ok", "seconds": 0.0}))
        return 1

    async def cancel(self, job: int | None = None) -> None:
        return None

    async def shutdown(self, timeout: float = 5.0) -> int | None:
        self.state = STOPPED
        return 0
