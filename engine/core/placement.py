"""The memory plan: where each part of the model lives while it generates, chosen before anything loads.

Torch-free: `dit-explore models --memory`, the checks before loading (engine/headless.py) and the engine
(engine/models.py) all call `plan_placement`, which predicts the device's peak for each setting from the
model's configs (engine/core/memory.py's estimate, and each block's parameter count from its family) and
picks the first that fits, or obeys `--memory`:

- `full`: every component on the device.
- `offload`: the text encoders live in host memory and visit the device, one at a time, to encode a new
  prompt (the embeddings are cached, so a plan change on the same prompt never needs them). Where the
  blocks cannot stay beside the largest encoder, they leave the device while it encodes and come back
  block by block, prefetched, during the next denoising.
- `sequential`: the blocks live in pinned host memory too. As many as fit stay on the device after their
  first use (partial residency: the first blocks of the model's order); the rest are copied in just before
  they run, the next block in the plan's own order prefetched on a side stream, and dropped after. The
  text encoders as with `offload`.

None of them changes a number: the same weights run the same kernels (engine/placement.py), so the images
equal the full placement's. On the CPU there is one memory and only `full` means anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dit_explore.engine.core.memory import (
    DTYPE_BYTES,
    MemoryEstimate,
    estimate,
    format_bytes,
    text_encoder_parameters,
    text_encoders,
)
from dit_explore.engine.core.resolve import ModelSource

SETTINGS = ("full", "offload", "sequential")  # from the most resident to the least
CHOICES = ("auto", *SETTINGS)  # --memory
PREFETCH = 1  # blocks copied ahead of the one running
# Streamed blocks take turns in fixed buffers on the device (engine/placement.py), each the size of the
# largest streamed block: the one running, and the one prefetched.
SLOTS = PREFETCH + 1
# Weights copied in unit by unit (encoders, blocks) take more than their bytes: the caching allocator rounds
# each tensor up (large ones to 2 MiB). Measured on an H200: SD3's T5-XXL encoding beside its blocks took
# 3.6% over the prediction without this (docs/bench-2026-11-27-placement/).
COPY_ROUNDING = 1.04


class PlacementError(ValueError):
    """No placement fits, or the one asked for does not (one line, naming what would)."""


@dataclass(frozen=True)
class Placement:
    """Where the model lives: `setting` (one of SETTINGS), how many bytes of blocks stay on the device,
    whether the text encoders leave it after encoding, and the predicted peak on the device."""

    setting: str
    resident_bytes: int  # bytes of blocks that stay on the device (all for full and offload)
    resident_blocks: int  # how many blocks that is (the first ones in model order)
    block_count: int
    encoders_offloaded: bool
    evict_for_encoding: bool  # the resident blocks leave the device while an encoder runs
    peak: int  # predicted peak on the device, bytes

    @property
    def streams(self) -> bool:
        """Some blocks (or all of them, for a while) come in from host memory."""
        return self.resident_blocks < self.block_count or self.evict_for_encoding

    def details(self) -> str:
        """'31 of 57 blocks resident, text encoders offloaded, peak about 21 GB'."""
        bits = []
        if self.setting == "sequential":
            bits.append(f"{self.resident_blocks} of {self.block_count} blocks resident")
        if self.encoders_offloaded:
            bits.append("text encoders offloaded" + (" (the blocks step aside while one encodes)"
                                                     if self.evict_for_encoding and self.setting == "offload" else ""))
        return ", ".join([*bits, f"peak about {format_bytes(self.peak)}"])

    def describe(self) -> str:
        """'sequential (31 of 57 blocks resident, text encoders offloaded, peak about 21 GB)'."""
        return f"{self.setting} ({self.details()})"

    def to_record(self) -> dict[str, Any]:
        """What run.json, PNG metadata and the bench record of it."""
        return {"setting": self.setting, "resident_blocks": self.resident_blocks, "blocks": self.block_count,
                "encoders_offloaded": self.encoders_offloaded, "predicted_peak": self.peak}


@dataclass(frozen=True)
class _Parts:
    """The bytes the placements move around, from the configs."""

    overhead: int  # context, runtime, allocator and every phase's working memory (the phases' reservations add up)
    encoding: int  # context, runtime, allocator and the text encoding's working memory: while an encoder runs
    vae: int
    outside: int  # the transformer outside its blocks
    blocks: list[int]  # each block, in model order (stacks in layout order)
    encoders: list[int]  # each text encoder


def _parts(est: MemoryEstimate, source: ModelSource, quantization: str | None) -> _Parts:
    size = DTYPE_BYTES[est.dtype]
    family = source.family_info
    counts = family.block_parameters(source.transformer_config)
    if counts is None:  # a family without per-block counts: the transformer is one unit
        outside, blocks = est.parts["transformer weights"], []
    else:
        outside = counts[0] * size
        blocks = [n * (1 if quantization else size) for stack in source.layout.stacks for n in counts[1][stack.name]]
    # None where the estimate counts none (--random-weights builds a real-size alias without them).
    encoders = [text_encoder_parameters(e) * size for e in text_encoders(source)] \
        if est.parts["text encoder weights"] else []
    encoding = est.context + est.runtime + est.allocator + est.phases.get("text encoding", 0)
    return _Parts(overhead=est.context + est.working, encoding=encoding, vae=est.parts["VAE weights"], outside=outside,
                  blocks=blocks, encoders=encoders)


def _full(parts: _Parts, available: int | None) -> Placement:
    total = sum(parts.blocks)
    peak = parts.overhead + parts.vae + parts.outside + total + sum(parts.encoders)
    return Placement("full", total, len(parts.blocks), len(parts.blocks), False, False, peak)


def _with_encoders(parts: _Parts, on_device: int, available: int | None) -> tuple[bool, int]:
    """(whether the blocks step aside while an encoder runs, the peak) with `on_device` bytes of blocks on
    the device and the encoders visiting one at a time: beside the blocks if there is room, else with the
    blocks out of the way. Encoding and denoising peak apart: an encoder leaves (and the allocator gives its
    memory back) before the denoising's working memory is taken."""
    largest = _moved(max(parts.encoders, default=0))
    weights = parts.vae + parts.outside
    denoise = parts.overhead + weights + on_device
    beside = max(denoise, parts.encoding + weights + on_device + largest)
    evict = available is not None and beside > available
    return evict, max(denoise, parts.encoding + weights + largest) if evict else beside


def _offload(parts: _Parts, available: int | None) -> Placement:
    """Every block stays; the encoders visit."""
    evict, peak = _with_encoders(parts, _moved(sum(parts.blocks)), available)
    return Placement("offload", sum(parts.blocks), len(parts.blocks), len(parts.blocks), True, evict, peak)


def _sequential(parts: _Parts, available: int | None) -> Placement:
    """As many blocks resident as fit beside the two slots streamed ones take turns in; all of them when
    nothing is known. The encoders visit."""
    room = None if available is None else available - parts.overhead - parts.vae - parts.outside
    resident, count = 0, 0
    for size in (_moved(b) for b in parts.blocks):
        if room is not None and resident + size + SLOTS * max(parts.blocks[count + 1:], default=0) > room:
            break
        resident, count = resident + size, count + 1
    evict, peak = _with_encoders(parts, resident + SLOTS * max(parts.blocks[count:], default=0), available)
    return Placement("sequential", sum(parts.blocks[:count]), count, len(parts.blocks), True, evict, peak)


def _moved(size: int) -> int:
    """What weights copied in tensor by tensor take on the device (COPY_ROUNDING)."""
    return int(size * COPY_ROUNDING)


_BUILDERS = {"full": _full, "offload": _offload, "sequential": _sequential}


def candidates(source: ModelSource, width: int, height: int, available: int | None, *, guidance: float | None = None,
               dtype: str | None = None, device_kind: str = "cuda", max_sequence_length: int | None = None,
               random_weights: bool = False, analysis: bool = False, cached_spans: int = 0,
               quantization: str | None = None) -> dict[str, Placement]:
    """Every setting's placement of one `width` x `height` request on a device with `available` bytes
    free (None: unknown)."""
    est = estimate(source, width, height, None, guidance, dtype, device_kind, max_sequence_length=max_sequence_length,
                   random_weights=random_weights, analysis=analysis, cached_spans=cached_spans,
                   quantization=quantization)
    parts = _parts(est, source, quantization)
    return {name: build(parts, available) for name, build in _BUILDERS.items()}


def plan_placement(source: ModelSource, width: int, height: int, available: int | None, requested: str = "auto", *,
                   device_kind: str = "cuda", where: str = "the device", **options: Any) -> Placement:
    """The placement of `requested` (`auto`: the most resident setting that fits), or a PlacementError of
    one line naming what would fit. On the CPU only `full` exists."""
    if requested not in CHOICES:
        raise PlacementError(f"--memory {requested}: choose one of {', '.join(CHOICES)}")
    if device_kind != "cuda":
        if requested not in ("auto", "full"):
            raise PlacementError(f"--memory {requested} moves weights between host memory and a GPU; on the "
                                 f"{device_kind} everything is in one memory already (use --memory full or auto)")
        return candidates(source, width, height, None, device_kind=device_kind, **options)["full"]
    placements = candidates(source, width, height, available, device_kind=device_kind, **options)
    fitting = [name for name in SETTINGS if available is None or placements[name].peak <= available]
    if requested != "auto" and requested in fitting:
        return placements[requested]
    if requested == "auto" and fitting:
        return placements[fitting[0]]
    size = f"{source.name} at {width}x{height}"
    has = f"{where} has {format_bytes(available or 0)} free"
    if fitting:  # the one asked for does not fit, another does
        alternative = placements[fitting[0]]
        raise PlacementError(f"--memory {requested} needs about {format_bytes(placements[requested].peak)} for {size} "
                             f"but {has}; --memory {fitting[0]} fits ({alternative.details()})")
    least = placements["sequential"]
    hint = "" if options.get("quantization") else "; --quantize int8 stores the blocks in half the bytes"
    raise PlacementError(f"{size} needs about {format_bytes(least.peak)} even streaming every block (--memory "
                         f"sequential) but {has}{hint}; a smaller size needs less")

