"""The one error funnel of the explorer: an unexpected exception in a message handler, an action or a
worker is logged with its traceback and shown as one line, and the app goes on.

Textual stops a widget's message loop (and exits the app) when a handler raises; `funnel` wraps every
`on_*` handler and `action_*` method of a class so that never happens, and routes the error to
`report`. The log is the TUI's own file (`log_path()`), named in the notice, so the details are one
`less` away.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from textual.app import App

log = logging.getLogger("dit-explore.tui")
C = TypeVar("C", bound=type)
_LOG_PATH: Path | None = None


def log_path() -> Path:
    """Where this TUI process logs (beside the engine logs, in the cache folder)."""
    global _LOG_PATH
    if _LOG_PATH is None:
        from dit_explore.engine.core.resolve import cache_dir

        _LOG_PATH = cache_dir() / "logs" / f"tui-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    return _LOG_PATH


def start_logging() -> Path:
    """Send this process's log records to log_path() (the terminal belongs to the interface)."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return path


def report(app: App[Any], error: BaseException, where: str) -> None:
    """Log `error` with its traceback and tell the user in one line."""
    log.error("%s failed", where, exc_info=error)
    first = str(error).strip().splitlines()
    app.notify(f"{type(error).__name__}: {first[0] if first else ''}\n(details in {log_path()})",
               title=f"internal error in {where}", severity="error", timeout=15)


def _guard(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def guarded_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the funnel: reported, never fatal
                report(self.app, error, f"{type(self).__name__}.{name}")
                return None

        return guarded_async

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the funnel: reported, never fatal
            report(self.app, error, f"{type(self).__name__}.{name}")
            return None

    return guarded


def funnel(cls: C) -> C:
    """Class decorator: every `on_*` handler and `action_*` method defined in `cls` reports its errors
    instead of raising them into Textual."""
    for name, value in list(vars(cls).items()):
        if callable(value) and (name.startswith("on_") or name.startswith("action_")):
            setattr(cls, name, _guard(value, name))
    return cls
