"""Measure the block-activation cosine matrix of a loaded model (the similarity analysis).

Definition. Run the full (identity) model. For each prompt p, denoising step t and block b, H_b is the
block's output image-token hidden states for the conditional batch row (with classifier-free guidance
the batch is [unconditional, conditional]: the last row); for AuraFlow's single blocks, whose output is
text and image tokens together, the last N_image tokens. For blocks i, j:
c_ij(p, t) = mean over image tokens n of cos(H_i[n], H_j[n]), and S_ij = mean over all (p, t).

Cost. Each block's output is normalized per token and written into one preallocated buffer for the
current step (blocks x tokens x width, in the model's dtype); at the end of the step the Gram matrix of
that buffer, accumulated in float32 (one GEMM on CUDA), is added to a running sum on the device. Nothing per block
goes to the CPU, and nothing is kept across steps. Outputs are taken inside a wrapper module that the
executor puts in each block's place (no hooks, so compiled blocks stay compiled); the model's own block
lists are back when the analysis ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from engine.executor import Check
from engine.generate import Generator, dtype_name
from engine.plan import Plan
from engine.sampling import Settings
from engine.similarity import SimilarityResult, StackResult, cache_key, group_blocks

CHUNK_BYTES = 256 << 20  # float32 working set of one Gram chunk

Progress = Callable[[int, int, int, int], None]  # (prompt index, prompts, step done, steps)


class CaptureBlock(nn.Module):
    """Runs a block and hands its output to the accumulator."""

    def __init__(self, block: nn.Module, position: int, sink: SimilarityAccumulator) -> None:
        super().__init__()
        self.block = block
        self.position = position
        self.sink = sink
        self.context_pre_only = bool(getattr(block, "context_pre_only", False))  # read by SD3's forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        self.sink.capture(self.position, out)
        return out


class SimilarityAccumulator:
    """Running sum of per-step cosine matrices over a fixed block order."""

    def __init__(self, order: Sequence[tuple[str, int]], image_tokens: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.order = list(order)
        self.position = {key: i for i, key in enumerate(self.order)}
        self.image_tokens = image_tokens
        self.device = device
        self.dtype = dtype
        self.buffer: torch.Tensor | None = None  # (blocks, tokens, width) of the current step
        self.seen = torch.zeros(len(self.order), dtype=torch.bool)
        self.total = torch.zeros(len(self.order), len(self.order), dtype=torch.float32, device=device)
        self.count = 0

    def wrap(self, stack: str, index: int, block: nn.Module) -> nn.Module:
        return CaptureBlock(block, self.position[(stack, index)], self)

    def image_states(self, out: Any) -> torch.Tensor:
        """The conditional row's image tokens of a block output."""
        if isinstance(out, tuple):  # (encoder_hidden_states, hidden_states): the image stream
            hidden = out[1]
        else:  # AuraFlow single blocks: [text tokens, image tokens] in one sequence
            hidden = out[:, -self.image_tokens :]
        return hidden[-1]

    def capture(self, position: int, out: Any) -> None:
        states = self.image_states(out)
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
    revision: str = "",
    check: Check = lambda: None,
    on_progress: Progress | None = None,
) -> SimilarityResult:
    """Measure S over `prompts` with `settings`, and group it (per stack and over all blocks)."""
    loaded = generator.loaded
    layout = loaded.layout
    order = [(s.name, i) for s in layout.stacks for i in range(s.blocks)]
    acc = SimilarityAccumulator(order, image_token_count(generator, settings), loaded.device, loaded.dtype)
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
    key = cache_key(model=loaded.source.name, revision=revision, prompts=prompts, steps=settings.steps,
                    width=settings.width, height=settings.height, seed=settings.seed,
                    dtype=dtype_name(loaded.dtype), guidance=settings.guidance)
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
        key=key,
    )
