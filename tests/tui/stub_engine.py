"""A stand-in for EngineClient where a test needs a deterministic screen (SVG snapshots): it says hello
and ready at once with fixed values, answers an analysis with a fixed synthetic matrix (smooth decay with
a dissimilar first block, the shape real DiTs show), and never runs plans. A sweep is answered, when the
test gives one, from a prepared folder: its files are copied into the sweep's folder, then one `progress`
per item and `done`. Behavior tests use the real engine."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Event, Status
from dit_explore.engine.core.resolve import ModelSource
from dit_explore.engine.core.similarity import SimilarityResult, StackResult, group_blocks


def synthetic_result(source: ModelSource, prompts: tuple[str, ...] | None = None) -> SimilarityResult:
    order = [(s.name, i) for s in source.layout.stacks for i in range(s.blocks)]
    n = len(order)
    matrix = [[1.0 if i == j else 0.35 + 0.6 * math.exp(-abs(i - j) / 5) * (0.5 if 0 in (i, j) else 1.0)
               for j in range(n)] for i in range(n)]
    stacks, start = {}, 0
    for s in source.layout.stacks:
        sub = [row[start : start + s.blocks] for row in matrix[start : start + s.blocks]]
        stacks[s.name] = StackResult(s.blocks, sub, group_blocks(sub))
        start += s.blocks
    return SimilarityResult(source.name, stacks, order, matrix, group_blocks(matrix),
                            list(prompts or ["p1", "p2", "p3", "p4", "p5"]), 4, 0)


class StubEngine:
    """`runs`: where to record the run requests it gets (answered with `done` ok); without it, a run
    request fails the test. `sweep_from`: the folder whose files answer a sweep (without it, a sweep
    request fails the test); the requests are kept in `sweeps`."""

    def __init__(self, source: ModelSource, runs: list[protocol.Run] | None = None,
                 available: int | None = None, sweep_from: Path | None = None) -> None:
        """`available`: the bytes its `ready` says a request may use (None: unknown)."""
        self.source = source
        self.runs = runs
        self.available = available
        self.sweep_from = sweep_from
        self.sweeps: list[protocol.Sweep] = []
        self.state = EngineState.STOPPED
        self.log_path = Path("engine.log")
        self.hello: protocol.Hello | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    @property
    def alive(self) -> bool:
        return self.state != EngineState.STOPPED

    async def start(self, timeout: float = 60.0) -> protocol.Hello:
        s = self.source
        self.hello = protocol.Hello(protocol=protocol.PROTOCOL_VERSION, model=s.name, location=s.location,
                                    kind=s.kind, family=s.family, layout=s.layout, defaults=s.defaults,
                                    size_multiple=s.size_multiple, max_side=s.max_side, pid=os.getpid(), log=None,
                                    device="cuda", dtype=None, random_weights=False)
        self._events.put_nowait(self.hello)
        self._events.put_nowait(protocol.Ready(device="cuda:0", dtype="bfloat16", load_seconds=12.5,
                                               random_weights=False, available=self.available))
        self.state = EngineState.READY
        return self.hello

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    async def submit(self, request: protocol.Run | protocol.Analyze | protocol.Sweep) -> int:
        if isinstance(request, protocol.Sweep):
            return self.sweep(request)
        if isinstance(request, protocol.Run):
            if self.runs is None:
                raise AssertionError("the stub engine does not run plans")
            self.runs.append(request)
            self._events.put_nowait(protocol.Done(job=request.job, status=Status.OK))
            return request.job
        self._events.put_nowait(protocol.Analysis(job=request.job, cached=True,
                                                  result=synthetic_result(self.source, request.prompts)))
        self._events.put_nowait(protocol.Done(job=request.job, status=Status.OK))
        return request.job

    def sweep(self, request: protocol.Sweep) -> int:
        """The prepared folder's files into the sweep's folder, a `progress` per item (its results' rows,
        in order), `done` ok with the folder."""
        if self.sweep_from is None:
            raise AssertionError("the stub engine has no sweep to answer with")
        self.sweeps.append(request)
        out = Path(request.out_dir)
        shutil.copytree(self.sweep_from, out, dirs_exist_ok=True)
        rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
        for done, row in enumerate(rows, 1):
            self._events.put_nowait(protocol.Progress(job=request.job, index=0, role=protocol.Role.SWEEP, step=done,
                                                      steps=len(rows), elapsed=0.1 * done, label=row["plan"]))
        self._events.put_nowait(protocol.Done(job=request.job, status=Status.OK, images=len(rows), seconds=1.5,
                                              path=str(out)))
        return request.job

    async def cancel(self, job: int | None = None) -> None:
        return None

    async def shutdown(self, timeout: float = 5.0) -> int | None:
        self.state = EngineState.STOPPED
        return 0
