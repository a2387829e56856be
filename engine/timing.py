"""Honest timings on CPU and GPU: the one timing utility of the generation path and the benchmarks.

On CUDA, kernels run asynchronously, so wall-clock around a Python call measures the launch, not the work.
Intervals (the generation's per-step transformer time) are therefore recorded with CUDA events and
resolved once at the end (one synchronize); Timer (the benchmarks' per-call milliseconds) brackets a
batch of calls with two events; wall-clock stages call `sync()` before reading the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


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
