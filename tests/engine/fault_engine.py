"""An engine process with fault switches, for tests of the engine's recovery path and of the soak.

A prompt starting with "FAULT:" makes every Flux single-stream block raise CUDA out-of-memory, so the
failure happens mid-run, after the double-stream blocks have run: the engine must report it, restore
the block lists, empty the cache and serve the next request. A prompt starting with "LEAK:" makes the
engine keep 1 MB (written, so resident) per generation, forever: the soak must notice.

A full disk: from a prompt starting with "ENOSPC:" on, every write to a regular file fails with ENOSPC
until the job ends ("ENOSPC-ONCE:": only the first one), as os.write does on a full disk, so the run
directory's real writers meet it mid-run. A ping with id READER_FAULT_PING makes reading stdin fail
(EIO): the request reader cannot go on. With DIT_EXPLORE_FAULT=escape-load in the environment an
exception escapes every handler of the engine while it loads.
Run as `python -m tests.engine.fault_engine`.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

from dit_explore.engine import generate, server
from dit_explore.engine.core import protocol
from dit_explore.engine.server import main

READER_FAULT_PING = 404_404
_armed = False
_disk_full = 0  # writes to regular files that fail with ENOSPC from now on; -1: every one
_leaked: list[bytes] = []
_real_generate = generate.Generator.generate
_real_forward = FluxSingleTransformerBlock.forward
_real_write = os.write
_real_execute = server.Engine.execute
_real_read_frame = protocol.FrameReader.read_frame
_real_load = server.Engine.load


def _generate(self: generate.Generator, prompt: str, *args: Any, **kwargs: Any) -> Any:
    global _armed, _disk_full
    _armed = prompt.startswith("FAULT:")
    if prompt.startswith(("ENOSPC:", "ENOSPC-ONCE:")):
        _disk_full = 1 if prompt.startswith("ENOSPC-ONCE:") else -1
    if prompt.startswith("LEAK:"):
        _leaked.append(os.urandom(1 << 20))
    try:
        return _real_generate(self, prompt, *args, **kwargs)
    finally:
        _armed = False


def _forward(self: FluxSingleTransformerBlock, *args: Any, **kwargs: Any) -> Any:
    if _armed:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)")
    return _real_forward(self, *args, **kwargs)


def _write(fd: int, data: Any) -> int:
    global _disk_full
    if _disk_full and stat.S_ISREG(os.fstat(fd).st_mode):
        if _disk_full > 0:
            _disk_full -= 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real_write(fd, data)


def _execute(self: server.Engine, job: Any) -> None:
    global _disk_full
    try:
        _real_execute(self, job)
    finally:
        _disk_full = 0  # the disk has room again for the next job


def _read_frame(self: protocol.FrameReader) -> Any:
    frame = _real_read_frame(self)
    if frame is not None and frame[0] == {"type": "ping", "id": READER_FAULT_PING}:
        raise OSError(errno.EIO, "Input/output error (injected by a test)")
    return frame


class _Escape(BaseException):
    """An exception no handler of the engine expects."""


def _load(self: server.Engine) -> bool:
    if os.environ.get("DIT_EXPLORE_FAULT") == "escape-load":
        raise _Escape("an exception that escapes every handler (injected by a test)")
    return _real_load(self)


generate.Generator.generate = _generate  # type: ignore[method-assign]
FluxSingleTransformerBlock.forward = _forward
os.write = _write
server.Engine.execute = _execute  # type: ignore[method-assign]
protocol.FrameReader.read_frame = _read_frame  # type: ignore[method-assign]
server.Engine.load = _load  # type: ignore[method-assign]
sys.exit(main())
