"""An engine process with fault switches, for tests of the engine's recovery path and of the soak.

A prompt starting with "FAULT:" makes every Flux single-stream block raise CUDA out-of-memory, so the
failure happens mid-run, after the double-stream blocks have run: the engine must report it, restore
the block lists, empty the cache and serve the next request. A prompt starting with "LEAK:" makes the
engine keep 1 MB (written, so resident) per generation, forever: the soak must notice.
Run as `python -m tests.engine.fault_engine`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

from dit_explore.engine import generate
from dit_explore.engine.server import main

_armed = False
_leaked: list[bytes] = []
_real_generate = generate.Generator.generate
_real_forward = FluxSingleTransformerBlock.forward


def _generate(self: generate.Generator, prompt: str, *args: Any, **kwargs: Any) -> Any:
    global _armed
    _armed = prompt.startswith("FAULT:")
    if prompt.startswith("LEAK:"):
        _leaked.append(os.urandom(1 << 20))
    try:
        return _real_generate(self, prompt, *args, **kwargs)
    finally:
        _armed = False
_leaked: list[bytes] = []


def _forward(self: FluxSingleTransformerBlock, *args: Any, **kwargs: Any) -> Any:
    if _armed:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)")
    return _real_forward(self, *args, **kwargs)


generate.Generator.generate = _generate  # type: ignore[method-assign]
FluxSingleTransformerBlock.forward = _forward  # type: ignore[method-assign]
sys.exit(main())
