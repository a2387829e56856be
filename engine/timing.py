"""Honest timings on CPU and GPU: the one timing utility of the generation path and the benchmarks.

On CUDA, kernels run asynchronously, so wall-clock around a Python call measures the launch, not the work.
Intervals (the generation's per-step transformer time) are therefore recorded with CUDA events and
resolved once at the end (one synchronize); Timer (the benchmarks' per-call milliseconds) brackets a
batch of calls with two events; wall-clock stages call `sync()` before reading the clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Plan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Intervals:
    """Start/stop pairs tagged with a key (e.g. the denoising step), summed per key when read."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._device = device
        self._open: tuple[Any, Any] | None = None
        self._done: list[tuple[Any, Any, Any]] = []  # (key, start, end)

    def _mark(self) -> Any:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, key: Any) -> None:
        self._open = (key, self._mark())

    def stop(self) -> None:
        if self._open is None:
            return
        key, begin = self._open
        self._done.append((key, begin, self._mark()))
        self._open = None

    def seconds_by_key(self) -> dict[Any, float]:
        if self._cuda:
            sync(self._device)
        out: dict[Any, float] = {}
        for key, begin, end in self._done:
            seconds = begin.elapsed_time(end) / 1000.0 if self._cuda else end - begin
            out[key] = out.get(key, 0.0) + seconds
        return out


class Timer:
    """Per-call milliseconds of a callable: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        sync(self.device)

    def mark(self) -> Any:
        """A point in time: a recorded CUDA event on a GPU, perf_counter seconds elsewhere."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, begin: Any, end: Any) -> float:
        """Seconds between two marks (on a GPU, after the work between them has finished)."""
        if self.cuda:
            end.synchronize()
            return float(begin.elapsed_time(end)) / 1000.0
        return float(end - begin)

    def ms(self, fn: Callable[[], Any], calls: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / calls
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - begin) * 1000 / calls


@dataclass
class StepInputs:
    """The arguments of one transformer call, positional and keyword, as the pipeline made it."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, module: torch.nn.Module) -> Any:
        return module(*self.args, **self.kwargs)


@dataclass(frozen=True)
class SideBySide:
    """A plan against the full model on the same transformer inputs, interleaved: median seconds per
    call of each, and each block's median seconds in the full model's calls."""

    plan: float
    identity: float
    calls: int
    blocks: dict[str, tuple[float, ...]]  # stack -> seconds of each block, in index order


class _BlockClock(torch.nn.Module):
    """Stands in for a block in a timed call: brackets it with two marks."""

    def __init__(self, block: torch.nn.Module, marks: list[Any], key: tuple[str, int], timer: Timer) -> None:
        super().__init__()
        self.block, self.marks, self.key, self.timer = block, marks, key, timer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        begin = self.timer.mark()
        out = self.block(*args, **kwargs)
        self.marks.append((self.key, begin, self.timer.mark()))
        return out


def side_by_side(transformer: torch.nn.Module, layout: Layout, plan: Plan, inputs: StepInputs, device: torch.device,
                 calls: int, check: Callable[[], None] = lambda: None, min_seconds: float = 0.0,
                 max_calls: int = 50) -> SideBySide:
    """Time `plan` and the full model on the same inputs, interleaved (plan, full, plan, full, ...), under
    the same conditions: the measured speedup is then a ratio of warm medians, never a cold run against a
    warm one. At least `calls` pairs, and more (up to `max_calls`) until `min_seconds` have been spent:
    a cheap call (a tiny model on a busy CPU) is timed often enough for its median to mean something.
    One more full-model call, with a clock around each block, gives each block's share. A plan with cached
    spans is timed as it runs after the first step: its warm-up call computes and records them, the timed
    calls reuse (or forecast) them (engine/core/sampling.py `step_variants` times the first step apart)."""
    from dit_explore.engine.branches import applied_with_branches
    from dit_explore.engine.core.plan import has_cached
    from dit_explore.engine.executor import Residuals, applied

    timer = Timer(device)
    plan_s: list[float] = []
    full_s: list[float] = []
    kept = Residuals()  # the plan's cached spans, recorded by the warm-up call
    later = 1 if has_cached(plan) else 0  # the step the timed calls run as

    def run(variant: Plan, step: int, out: list[float] | None) -> None:
        """One call of the transformer under `variant` at `step`; timed into `out` (the plan's lists are
        put in before the clock starts)."""
        with applied_with_branches(transformer, layout, variant, [step], check=check,
                                   residuals=kept if variant is plan else None) as handle:
            handle.at_step(step)
            if out is None:
                inputs(transformer)
            else:
                out.append(timer.ms(lambda: inputs(transformer), 1) / 1000.0)

    with torch.inference_mode():
        for variant in (plan, Plan()):  # warm both once (allocator, kernels; the plan's residuals)
            run(variant, 0, None)
        spent = 0.0
        while len(plan_s) < calls or (spent < min_seconds and len(plan_s) < max_calls):
            for variant, out in ((plan, plan_s), (Plan(), full_s)):
                check()
                run(variant, later if variant is plan else 0, out)
                spent += out[-1]
        marks: list[tuple[tuple[str, int], Any, Any]] = []

        def clocked(stack: str, index: int, block: torch.nn.Module) -> torch.nn.Module:
            return _BlockClock(block, marks, (stack, index), timer)

        check()
        with applied(transformer, layout, Plan(), check, clocked):
            inputs(transformer)
        timer.sync()
    seconds = {key: timer.seconds(begin, end) for key, begin, end in marks}
    blocks = {s.name: tuple(seconds.get((s.name, i), 0.0) for i in range(s.blocks)) for s in layout.stacks}
    return SideBySide(plan=statistics.median(plan_s), identity=statistics.median(full_s), calls=len(plan_s),
                      blocks=blocks)
