"""Measure the block-activation cosine matrix of a loaded model (the similarity analysis).

Definition. Run the full (identity) model. For each prompt p, denoising step t and block b, H_b is the
block's output image-token hidden states for the conditional batch row (with classifier-free guidance
the batch is [unconditional, conditional]: the last row), taken as the stack's declared BlockIO says
(for AuraFlow's single blocks, whose output is text and image tokens together, the last N_image tokens). For blocks i, j:
c_ij(p, t) = mean over image tokens n of cos(H_i[n], H_j[n]), and S_ij = mean over all (p, t).

Cost. Each block's output is normalized per token and written into one preallocated buffer for the
current step (blocks x tokens x width, in the model's dtype); at the end of the step the Gram matrix of
that buffer, accumulated in float32 (one GEMM on CUDA), is added to a running sum on the device. Nothing per block
goes to the CPU, and nothing is kept across steps. Outputs are taken inside a wrapper module that the
executor puts in each block's place (no hooks, so compiled blocks stay compiled); the model's own block
lists are back when the analysis ends, however it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dit_explore.engine.core.families import BlockIO, family
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Plan
from dit_explore.engine.core.resolve import cache_dir
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.core.similarity import (
    SimilarityResult,
    StackResult,
    cache_key,
    group_blocks,
    load_cached,
    load_result_for,
    store_cached,
)
from dit_explore.engine.executor import Check, StandIn
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded

SHIPPED_ANALYSIS = "similarity.json"  # in a toy's folder: its default analysis, as `dit-explore analyze` wrote it

CHUNK_BYTES = 256 << 20  # float32 working set of one Gram chunk

Progress = Callable[[int, int, int, int], None]  # (prompt index, prompts, step done, steps)


class CaptureBlock(StandIn):
    """Runs a block and hands its output's image tokens (as its stack's BlockIO declares them) to the
    accumulator."""

    def __init__(self, block: nn.Module, position: int, io: BlockIO, where: str, sink: SimilarityAccumulator) -> None:
        super().__init__()
        self.block = block
        self.position = position
        self.io = io
        self.where = where
        self.sink = sink

    def standing_for(self) -> nn.Module | None:
        return self.block

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        self.sink.capture(self.position, self.io.image_tokens(out, self.sink.image_tokens, self.where))
        return out


class SimilarityAccumulator:
    """Running sum of per-step cosine matrices over a fixed block order."""

    def __init__(self, layout: Layout, image_tokens: int, device: torch.device, dtype: torch.dtype) -> None:
        self.family = family(layout.family)
        self.order = [(s.name, i) for s in layout.stacks for i in range(s.blocks)]
        self.position = {key: i for i, key in enumerate(self.order)}
        self.image_tokens = image_tokens
        self.device = device
        self.dtype = dtype
        self.buffer: torch.Tensor | None = None  # (blocks, tokens, width) of the current step
        self.seen = torch.zeros(len(self.order), dtype=torch.bool)
        self.total = torch.zeros(len(self.order), len(self.order), dtype=torch.float32, device=device)
        self.count = 0

    def wrap(self, stack: str, index: int, block: nn.Module) -> nn.Module:
        return CaptureBlock(block, self.position[(stack, index)], self.family.stack(stack).io,
                            f"{stack} block {index}", self)

    def capture(self, position: int, image: torch.Tensor) -> None:
        """Record one block's image tokens, (batch, tokens, width): the conditional (last) row."""
        states = image[-1]
        if self.buffer is None:
            self.buffer = torch.empty((len(self.order), *states.shape), dtype=self.dtype, device=self.device)
        # Per-token unit vectors, written straight into the buffer: the norms are accumulated in float32,
        # and no float32 copy of the block output is made (two light passes instead of four).
        norms = torch.linalg.vector_norm(states, dim=-1, keepdim=True, dtype=torch.float32).clamp_min_(1e-12)
        torch.div(states, norms.to(states.dtype), out=self.buffer[position])
        self.seen[position] = True

    def end_step(self) -> None:
        """Add this step's matrix (mean over tokens of the cosines) to the running sum."""
        if self.buffer is None or not bool(self.seen.all()):
            missing = [self.order[i] for i in range(len(self.order)) if not self.seen[i]]
            raise RuntimeError(f"analysis: blocks did not run this step: {missing[:5]}")
        blocks, tokens, width = self.buffer.shape
        flat = self.buffer.reshape(blocks, -1)
        if flat.dtype == torch.float32:
            step = flat @ flat.T
        elif flat.is_cuda:  # one GEMM over the half-precision buffer, accumulated and returned in float32
            step = torch.mm(flat, flat.T, out_dtype=torch.float32)
        else:  # elsewhere: float32 copies of a chunk of tokens at a time
            chunk = max(1, CHUNK_BYTES // (blocks * width * 4))
            step = torch.zeros_like(self.total)
            for start in range(0, tokens, chunk):
                part = self.buffer[:, start : start + chunk].reshape(blocks, -1).float()
                step += part @ part.T
        self.total += step / tokens
        self.count += 1
        self.seen[:] = False

    def matrix(self) -> list[list[float]]:
        if not self.count:
            raise RuntimeError("analysis: no step was measured")
        return (self.total / self.count).cpu().double().tolist()


def image_token_count(generator: Generator, settings: Settings) -> int:
    multiple = generator.loaded.source.size_multiple
    return (settings.height // multiple) * (settings.width // multiple)


def analyze(
    generator: Generator,
    prompts: Sequence[str],
    settings: Settings,
    *,
    groups: int | None = None,
    check: Check = lambda: None,
    on_progress: Progress | None = None,
) -> SimilarityResult:
    """Measure S over `prompts` with `settings`, and group it (per stack and over all blocks)."""
    loaded = generator.loaded
    layout = loaded.layout
    acc = SimilarityAccumulator(layout, image_token_count(generator, settings), loaded.device, loaded.dtype)
    order = acc.order
    for p, prompt in enumerate(prompts):

        def step_done(done: int, total: int, _latents: Any, p: int = p) -> None:
            acc.end_step()
            if on_progress is not None:
                on_progress(p, len(prompts), done, total)

        generator.generate(prompt, settings, Plan(), check=check, on_step=step_done, wrap=acc.wrap, decode=False)
    matrix = acc.matrix()
    stacks: dict[str, StackResult] = {}
    start = 0
    for s in layout.stacks:
        sub = [row[start : start + s.blocks] for row in matrix[start : start + s.blocks]]
        stacks[s.name] = StackResult(s.blocks, sub, group_blocks(sub, min(groups, s.blocks) if groups else None))
        start += s.blocks
    return SimilarityResult(
        model=loaded.source.name,
        stacks=stacks,
        order=order,
        matrix=matrix,
        groups=group_blocks(matrix, min(groups, len(order)) if groups else None),
        prompts=list(prompts),
        steps=settings.steps,
        seed=settings.seed,
        settings=settings.to_json(),
        key=analysis_key(loaded, prompts, settings),
    )


def analysis_key(loaded: Loaded, prompts: Sequence[str], settings: Settings) -> dict[str, Any]:
    """What identifies an analysis of this model and these inputs: its on-disk cache key."""
    return cache_key(model=loaded.source.name, revision=loaded.revision, prompts=prompts, steps=settings.steps,
                     width=settings.width, height=settings.height, seed=settings.seed,
                     dtype=loaded.precision, guidance=settings.guidance)


def cached_analysis(generator: Generator, prompts: Sequence[str], settings: Settings, *, groups: int | None = None,
                    use_cache: bool = True, check: Check = lambda: None,
                    on_progress: Progress | None = None) -> tuple[SimilarityResult, bool]:
    """The analysis from the on-disk cache when this exact one was made before (regrouped as asked), else
    measured and stored; and whether it came from the cache. The one cache flow of the CLI and engine."""
    root = cache_dir()
    key = analysis_key(generator.loaded, prompts, settings)
    result = load_cached(root, key) if use_cache else None
    if result is None and use_cache and generator.loaded.source.kind == "toy":
        # A toy ships its default analysis (measured on the CPU in float32): the first screen is colored at once.
        result = load_result_for(Path(generator.loaded.source.location) / SHIPPED_ANALYSIS, key)
    if result is not None:
        return result.regroup(groups), True
    result = analyze(generator, prompts, settings, groups=groups, check=check, on_progress=on_progress)
    try:
        store_cached(root, result)
    except OSError as exc:  # a full disk, a read-only cache folder: the result stands, uncached
        logging.getLogger("dit-explore").warning("could not cache the analysis in %s: %s", root, exc)
    return result, False
