"""SIGTERM and SIGHUP as a ctrl+c for the command-line entry points (torch-free: both processes' commands
use it): the signal unwinds the stack like a KeyboardInterrupt, so whatever is staged is removed the same
way, and the command exits with 128 + the signal's number."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP while `stopped_like_ctrl_c` holds: unwinds like ctrl+c (a KeyboardInterrupt);
    the exit code is 128 + `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stopped_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated while the block runs (the main thread only: elsewhere Python
    cannot set handlers); the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, stop) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def how_stopped(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped a command, in words, and its exit code: "stopped by SIGTERM" and 143 (128 + the
    signal's number) for a Terminated, "interrupted" and 130 for ctrl+c."""
    if isinstance(exc, Terminated):
        return f"stopped by {signal.Signals(exc.signum).name}", 128 + exc.signum
    return "interrupted", 130
