"""Running code that, were a fix undone, would hang (a FIFO with no writer) or eat the machine's memory
(reading /dev/zero to the end): the test then fails instead, within seconds and a memory cap."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

MEMORY_CAP = 2 << 30  # address space of a guarded child process


def in_thread(fn: Callable[[], Any], fifo: Path | None = None, timeout: float = 20.0) -> Any:
    """fn() in a thread; if it has not returned within `timeout` seconds (it blocks on `fifo`), a writer
    opens and closes `fifo` so that the thread ends, and the test fails. Returns fn's value or raises
    its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which raises it
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets EOF
        thread.join(timeout)
        raise AssertionError(f"blocked for more than {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def capped_run(args: list[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`python args...` in a child with at most MEMORY_CAP of address space and `timeout` seconds."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_cap_memory, check=False, **kwargs)


def cli(*argv: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`dit-explore argv...` in a capped child process."""
    return capped_run(["-c", "import sys; from dit_explore.tui.cli import main; sys.exit(main(sys.argv[1:]))", *argv],
                      timeout=timeout, env={**os.environ, **(env or {})})
