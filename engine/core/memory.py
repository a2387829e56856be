"""How much memory a request needs, predicted from the model's configs before any model work.

Torch-free: the engine checks requests with it before loading or generating (engine/server.py,
engine/headless.py), and the TUI can check a size as the user types it:

    est = estimate(source, width, height, steps, guidance, dtype, device_kind)   # a MemoryEstimate
    est.total, est.working, est.phases, est.parts, est.describe()                # bytes; "about 1.2 TB (VAE decode 1.1 TB)"
    check_fits(est, available_memory(), multiple=source.size_multiple)            # None, or one line with the largest size
    check_request(source, width, height, available, ...)                          # both in one call

The model of the peak (BENCHMARKS.md "Memory" has the measurements behind each term):

- weights: parameters x dtype size. Transformer: the family's formula over its config
  (`Family.transformer_parameters`); VAE: AutoencoderKL's layers over its config; text encoders: the
  family's declared shapes (the tiny pipelines': from their TinySpec). All exact (tests/engine/test_memory.py
  counts the real classes on the meta device).
- denoising: one block at its peak, measured per family (`MemorySpec`, in (tokens x width) tensors per
  image token and per text token), times the batch (2 with classifier-free guidance), plus the block's
  input, the prompt embeddings, Flux's rotary tables and the latents. No N x N attention matrix: torch's
  CPU kernel for unmasked attention is a flash attention too (measured), like CUDA's.
- VAE decode: a walk over the decoder's layers (from its config) that counts the tensors alive at each
  step: what the callers still hold, each layer's outputs, and each convolution's transient buffers
  (oneDNN's output in a 16-channel-blocked layout and a copy of the larger of input and output, measured
  per layer); then the image postprocessing. At large sizes this dominates: its peak is an upsampler's
  convolution at full resolution, about 110 floats per pixel for the tiny VAE, 960 for the real one.
- runtime: what a process's first generation adds beyond its tensors (lazy initialisation, kernel caches),
  measured at 64 px; context: what the device's runtime holds once a model is loaded (CUDA only).
- allocator: glibc keeps freed blocks below its mmap threshold (dynamic, at most 32 MiB) in its heaps,
  so identical CPU runs differ by up to a third; the allowance is 1.5 x the largest set of such tensors
  alive at once, which covers the worst run measured. Tensors of 32 MiB and more are mapped and unmapped
  exactly, so at large sizes the allowance fades. On CUDA: 10% for the caching allocator (provisional).

`working` (what a process holding the model needs on top of it) is the largest phase (text encoding,
denoising, then the decode, or the similarity analysis, which does not decode) plus runtime and
allocator; `total` adds the weights and the context.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dit_explore.engine.core.families import Family, MemorySpec, TextEncoderShape, TextEncoderSpec
from dit_explore.engine.core.resolve import ModelSource

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEVICE_KINDS = ("cpu", "cuda")

# engine/analysis.py: the float32 working set of one Gram chunk of the similarity analysis.
ANALYSIS_CHUNK_BYTES = 256 << 20

# The tiny pipelines' text encoders (engine/tiny.py): two layers of 16-wide heads, d_ff twice the width,
# tokenizers of every byte-level character (CLIP: 256 alone, 256 with "</w>", 2 specials) and of ASCII
# (T5: 4 specials, 94 characters, 26 word-initial letters). tests/engine/test_memory.py checks the
# counts against the built pipeline.
_TINY_TEXT_LAYERS = 2
_TINY_HEAD_DIM = 16
_TINY_T5_HEADS = 2
_TINY_VOCAB = {"clip": 514, "t5": 124}


@dataclass(frozen=True)
class DeviceCosts:
    """What a device kind adds beyond the model's tensors; calibrated by `python -m
    dit_explore.engine.memory_bench` (CPU here; CUDA values are provisional until measured there)."""

    context: int  # what the device's runtime takes once a model is loaded (the CUDA context), in `total` only
    runtime: int  # the first generation's growth beyond its tensors (lazy init, kernel caches, workspaces)
    # Allocator slack. CPU (glibc): tensors below `heap_chunk` (its largest dynamic mmap threshold) live in
    # heaps that keep freed chunks, so the heap can hold `heap_slack` times the largest set of such tensors
    # alive at once, on top of them; larger tensors are mapped and unmapped, exactly. CUDA: the caching
    # allocator's rounding and fragmentation, as a fraction `heap_slack` of everything (heap_chunk huge).
    heap_chunk: int
    heap_slack: float
    conv_block: int  # channels are padded to a multiple of this in the convolution's blocked layout
    half_extra: float  # per (tokens x width) of a block in 2-byte dtypes: float32 temporaries (norms, RoPE)
    # CUDA's caching allocator: what it reserves for a phase, as a multiple of the phase's tensors (its
    # block rounding and fragmentation; for the decode also cuDNN's convolution workspaces), by phase. It
    # keeps what a phase reserved for the phases after it, so a request's reservations add up.
    reserve: Mapping[str, float] = field(default_factory=dict)


COSTS = {
    # Measured here (2 cores, torch 2.13 CPU, glibc): see BENCHMARKS.md "Memory".
    "cpu": DeviceCosts(context=0, runtime=21 << 20, heap_chunk=32 << 20, heap_slack=1.5, conv_block=16,
                       half_extra=4.0),
    # Measured on an H100 (torch 2.11, CUDA 13; BENCHMARKS.md "Memory"): the context outside the allocator
    # (695-731 MB), cuBLAS's workspace (32 MiB, through the allocator), and the reservations by phase of
    # the real-size Flux, SD3 and AuraFlow at 1024 and 2048 px (denoising 2.0-2.2x its tensors' peak,
    # decode 1.6x of 1.26x the walk's estimate: cuDNN's workspaces; raised from 2.1 to 2.25 when the same
    # SD3 request reserved 20.40, 20.73 and 21.07 GB in three processes, cuDNN picking other workspaces:
    # docs/bench-2026-11-27-placement/).
    "cuda": DeviceCosts(context=768 << 20, runtime=32 << 20, heap_chunk=1 << 62, heap_slack=0.0, conv_block=1,
                        half_extra=4.0, reserve={"text encoding": 2.2, "denoising": 2.2, "similarity analysis": 2.2,
                                                 "VAE decode": 2.25}),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """The predicted peak of one request, in bytes, broken down. `total` is what a process that has not
    loaded the model yet needs; `working` what a process holding the model needs on top of it."""

    model: str
    width: int
    height: int
    device_kind: str
    dtype: str
    weights: int
    context: int
    runtime: int
    allocator: int
    phases: Mapping[str, int]  # text encoding, denoising, VAE decode (or similarity analysis)
    parts: Mapping[str, int]  # finer terms, for display and tests (weights by component, activations, ...)
    resized: Callable[[int, int], MemoryEstimate] = field(repr=False, compare=False)
    # The phases whose memory adds up (CUDA's caching allocator keeps each phase's reservation); empty:
    # only the largest phase counts (the CPU's allocator gives memory back).
    cumulative: tuple[str, ...] = ()

    @property
    def phase(self) -> str:
        """The phase that sets the peak."""
        return max(self.phases, key=lambda name: self.phases[name])

    @property
    def working(self) -> int:
        held = sum(self.phases[name] for name in self.cumulative) if self.cumulative else self.phases[self.phase]
        return held + self.runtime + self.allocator

    @property
    def total(self) -> int:
        return self.weights + self.context + self.working

    def need(self, loaded: bool = False) -> int:
        return self.working if loaded else self.total

    def describe(self, loaded: bool = False) -> str:
        """'about 1.2 TB (VAE decode 1.1 TB)': the need, and its largest part."""
        name, part = self.phase, self.phases[self.phase]
        if not loaded and self.weights > part:
            name, part = "weights", self.weights
        return f"about {format_bytes(self.need(loaded))} ({name} {format_bytes(part)})"


def format_bytes(n: float) -> str:
    """Decimal units, two significant digits at most: 850 MB, 22 GB, 1.2 TB."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


# ------------------------------------------------------------------------------------------ parameters


def _linear(inputs: int, outputs: int, bias: bool = True) -> int:
    return inputs * outputs + (outputs if bias else 0)


def _conv(inputs: int, outputs: int, kernel: int) -> int:
    return inputs * outputs * kernel * kernel + outputs


def vae_parameters(config: Mapping[str, Any]) -> int:
    """AutoencoderKL's parameter count (encoder and decoder) from its config.json, diffusers' defaults
    where absent; none for the toy models' parameter-free space-to-depth autoencoder."""
    if config.get("_class_name") == "SpaceToDepthAutoencoder":
        return 0
    blocks = [int(c) for c in config.get("block_out_channels", (64,))]
    layers = int(config.get("layers_per_block", 1))
    latent = int(config.get("latent_channels", 4))

    def resnet(cin: int, cout: int) -> int:
        return 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3) + (_conv(cin, cout, 1) if cin != cout else 0)

    top = blocks[-1]
    mid = 2 * resnet(top, top) + (2 * top + 4 * _linear(top, top) if config.get("mid_block_add_attention", True) else 0)
    encoder = _conv(int(config.get("in_channels", 3)), blocks[0], 3) + mid + 2 * top + _conv(top, 2 * latent, 3)
    previous = blocks[0]
    for i, channels in enumerate(blocks):
        encoder += resnet(previous, channels) + (layers - 1) * resnet(channels, channels)
        encoder += _conv(channels, channels, 3) if i < len(blocks) - 1 else 0
        previous = channels
    decoder = _conv(latent, top, 3) + mid + 2 * blocks[0] + _conv(blocks[0], int(config.get("out_channels", 3)), 3)
    previous = top
    for i, channels in enumerate(reversed(blocks)):
        decoder += resnet(previous, channels) + layers * resnet(channels, channels)
        decoder += _conv(channels, channels, 3) if i < len(blocks) - 1 else 0
        previous = channels
    quant = (_conv(2 * latent, 2 * latent, 1) if config.get("use_quant_conv", True) else 0) + (
        _conv(latent, latent, 1) if config.get("use_post_quant_conv", True) else 0)
    return encoder + decoder + quant


def text_encoder_parameters(shape: TextEncoderShape) -> int:
    """A CLIP or (UM)T5 text encoder's parameter count, as transformers builds it."""
    w, ff = shape.width, shape.ff
    if shape.model_class.startswith("CLIP"):
        layer = 2 * w + 4 * _linear(w, w) + 2 * w + _linear(w, ff) + _linear(ff, w)
        projection = w * (shape.projection or w) if shape.model_class.endswith("WithProjection") else 0
        return shape.vocab * w + shape.positions * w + shape.layers * layer + 2 * w + projection
    inner = shape.heads * (shape.head_dim or w // shape.heads)
    layer = 4 * w * inner + 2 * w + (3 if shape.gated else 2) * w * ff
    biases = 32 * shape.heads * (shape.layers if shape.model_class.startswith("UMT5") else 1)  # relative positions
    return shape.vocab * w + shape.layers * layer + biases + w


def tiny_text_encoder(spec: TextEncoderSpec) -> TextEncoderShape:
    """The shape of a tiny pipeline's text encoder (engine/tiny.py builds it from the same spec)."""
    w = spec.width
    if spec.tokenizer == "clip":
        return TextEncoderShape(spec.model_class, _TINY_VOCAB["clip"], w, _TINY_TEXT_LAYERS, 2 * w,
                                w // _TINY_HEAD_DIM, projection=spec.projection or w)
    return TextEncoderShape(spec.model_class, _TINY_VOCAB["t5"], w, _TINY_TEXT_LAYERS, 2 * w, _TINY_T5_HEADS,
                            head_dim=_TINY_HEAD_DIM, gated=spec.model_class.startswith("UMT5"))


def toy_text_encoder(spec: TextEncoderSpec) -> TextEncoderShape:
    """The shape of a toy pipeline's text encoder: the tiny one's, with the whole-word vocabulary
    (engine/core/toy_vocab.py; imported here only, it reads the shapes grammar)."""
    from dit_explore.engine.core.toy_vocab import vocab_size

    return replace(tiny_text_encoder(spec), vocab=vocab_size(spec.tokenizer))


def text_encoders(source: ModelSource) -> tuple[TextEncoderShape, ...]:
    family = source.family_info
    if source.kind == "tiny":
        return tuple(tiny_text_encoder(spec) for spec in family.tiny.text_encoders)
    if source.kind == "toy" and family.toy is not None:
        return tuple(toy_text_encoder(spec) for spec in family.toy.text_encoders)
    return family.memory.text_encoders if family.memory is not None else ()


# ------------------------------------------------------------------------------------------- the walk


class _Walk:
    """The tensors alive at each step of a computation (element counts, one entry per tensor), and the
    largest such sets: in all, and of the tensors small enough for the allocator's heap."""

    def __init__(self, costs: DeviceCosts, size: int) -> None:
        self.costs = costs
        self.size = size
        self.peak = 0  # bytes
        self.where = ""
        self.heap = 0  # bytes: the largest live set of heap-sized tensors

    def at(self, tensors: list[int], where: str) -> None:
        total = sum(tensors) * self.size
        if total > self.peak:
            self.peak, self.where = total, where
        limit = self.costs.heap_chunk
        self.heap = max(self.heap, sum(t for t in tensors if t * self.size < limit) * self.size)


class _Decoder(_Walk):
    """Walks diffusers' VAE Decoder (conv_in, mid block, up blocks, norm, conv_out): `held` is what the
    callers hold (the latents, the block's input), `x` the current input, which its caller also holds
    until the layer returns."""

    def conv_extra(self, cin: int, cout: int, pixels: int) -> list[int]:
        """What a convolution allocates: its output in a blocked layout padded to whole channel blocks,
        a copy of the larger of input and output (oneDNN's reorders), and the input again when widening."""
        block = self.costs.conv_block
        padded = -(-cout // block) * block
        return [padded * pixels, max(cin, padded) * pixels] + ([cin * pixels] if cout > cin else [])

    def conv(self, held: list[int], cin: int, cout: int, pixels: int, where: str) -> int:
        self.at(held + [cin * pixels] + self.conv_extra(cin, cout, pixels), where)
        return cout * pixels

    def resnet(self, held: list[int], cin: int, cout: int, pixels: int, where: str) -> int:
        x, y = cin * pixels, cout * pixels
        self.at(held + [x, x, x], where)  # norm1, then SiLU of it
        self.at(held + [x, x] + self.conv_extra(cin, cout, pixels), where)  # conv1 (the SiLU alive)
        self.at(held + [x, y, y], where)  # norm2, SiLU
        self.at(held + [x, y] + self.conv_extra(cout, cout, pixels), where)  # conv2
        shortcut = cin != cout
        if shortcut:
            self.at(held + [x, y] + self.conv_extra(cin, cout, pixels), where)  # 1x1 shortcut
        self.at(held + [x] + [y] * (4 if shortcut else 3), where)  # (shortcut + h) / scale
        return y

    def attention(self, held: list[int], channels: int, pixels: int, where: str) -> int:
        # Group norm, q, k, v, the attention output and its projection, layout copies (measured: 6 x input).
        x = channels * pixels
        self.at(held + [x] * 7, where)
        return x

    def upsample(self, held: list[int], channels: int, pixels: int, where: str) -> int:
        x = channels * pixels
        self.at(held + [x, 4 * x] + self.conv_extra(channels, channels, 4 * pixels), where)
        return 4 * x

    def walk(self, config: Mapping[str, Any], width: int, height: int) -> None:
        blocks = [int(c) for c in config.get("block_out_channels", (64,))]
        resnets = int(config.get("layers_per_block", 1)) + 1
        latent = int(config.get("latent_channels", 4))
        factor = 2 ** (len(blocks) - 1)
        pixels = max(1, width // factor) * max(1, height // factor)
        z = latent * pixels
        held = [z, z]  # the latents as the pipeline hands them, and as scaled for the VAE
        if config.get("use_post_quant_conv", True):
            held.append(self.conv(held, latent, latent, pixels, "post_quant_conv"))
        top = blocks[-1]
        x = self.conv(held, latent, top, pixels, "conv_in")
        self.resnet(held, top, top, pixels, "mid_block")
        if config.get("mid_block_add_attention", True):
            self.attention(held + [x], top, pixels, "mid_block attention")
        x = self.resnet(held + [x], top, top, pixels, "mid_block")
        previous = top
        side = max(1, width // factor)
        for i, channels in enumerate(reversed(blocks)):
            where = f"up_blocks.{i} ({channels} channels, {side} px wide)"
            block_input = x
            for j in range(resnets):
                x = self.resnet(held + ([block_input] if j else []), previous if j == 0 else channels, channels,
                                pixels, where)
            if i < len(blocks) - 1:
                where = f"up_blocks.{i} upsampler ({channels} channels, {2 * side} px wide)"
                x = self.upsample(held + [block_input], channels, pixels, where)
                pixels, side = 4 * pixels, 2 * side
            previous = channels
        self.at(held + [x, x], "conv_norm_out")  # the last block's output, normalized (then dropped), SiLU
        self.conv(held, blocks[0], int(config.get("out_channels", 3)), pixels, "conv_out")


# ------------------------------------------------------------------------------------------- estimate


def image_tokens(source: ModelSource, width: int, height: int) -> int:
    multiple = source.size_multiple
    return max(1, width // multiple) * max(1, height // multiple)


def text_tokens(source: ModelSource, max_sequence_length: int | None) -> int:
    """What the transformer sees of the prompt: the family's embeddings (its encoders' sequences), plus
    the tokens the transformer itself prepends."""
    family = source.family_info
    shapes = family.pseudo_embeddings(source.transformer_config, max_sequence_length or 256, False)
    embeds = shapes.get("prompt_embeds") or next(s for s in shapes.values() if len(s.shape) == 3)
    return int(embeds.shape[1]) + (family.memory.register_tokens if family.memory is not None else 0)


def _width(config: Mapping[str, Any]) -> tuple[int, int]:
    heads = int(config.get("num_attention_heads", 1))
    head_dim = int(config.get("attention_head_dim", 64))
    return heads * head_dim, head_dim


def estimate(
    source: ModelSource,
    width: int,
    height: int,
    steps: int | None = None,
    guidance: float | None = None,
    dtype: str | None = None,
    device_kind: str = "cpu",
    *,
    max_sequence_length: int | None = None,
    random_weights: bool = False,
    analysis: bool = False,
    weights_bytes: int | None = None,
    cached_spans: int = 0,
    quantization: str | None = None,
) -> MemoryEstimate:
    """The predicted peak of generating one `width` x `height` image of `source` (batch 1).

    `guidance` decides classifier-free guidance (the family's rule; the model's default when None);
    `dtype` is a torch dtype name (bfloat16 on CUDA, float32 on CPU when None); `device_kind` "cpu" or
    "cuda". `steps` does not change the peak (nothing grows with the step count) and is accepted so
    that callers can pass a request as it is. `random_weights`: no text encoders (real-size aliases built
    from their configs); `analysis`: the similarity analysis (no decode; its block buffer instead);
    `weights_bytes`: the loaded model's own parameter bytes, when known; `cached_spans`: the plan's cached
    spans (`@reuse`, `@forecast`), each keeping the residuals of its last two computed steps, every stream,
    in float32, for the whole denoising; `quantization`: the blocks' (`--quantize`: any kind stores the
    blocks' parameters in one byte each; their scales, one per output channel or row, and the biases and
    norms that stay in the model's dtype add about 0.1% at real size and are not counted).
    """
    del steps
    if device_kind not in COSTS:
        raise ValueError(f"device kind {device_kind!r}: choose one of {', '.join(COSTS)}")
    dtype = dtype or ("bfloat16" if device_kind == "cuda" else "float32")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPE_BYTES)}")
    family: Family = source.family_info
    spec: MemorySpec = family.memory or MemorySpec(image_activations=16.0, text_activations=16.0)
    costs = COSTS[device_kind]
    size = DTYPE_BYTES[dtype]
    cfg = family.uses_cfg(source.defaults.guidance if guidance is None else guidance)
    batch = 2 if cfg else 1
    sequence = max_sequence_length or source.defaults.max_sequence_length
    transformer, vae = source.transformer_config, source.vae_config
    parts: dict[str, int] = {}

    # Weights.
    upcast = family.upcasts_vae and dtype == "float16" and bool(vae.get("force_upcast", True))
    encoders = () if random_weights and source.kind not in ("tiny", "toy") else text_encoders(source)
    split = family.transformer_parameter_split(transformer) or (0, 0)
    parts["transformer weights"] = split[0] * size + split[1] * (1 if quantization else size)
    parts["VAE weights"] = vae_parameters(vae) * (4 if upcast else size)
    parts["text encoder weights"] = sum(text_encoder_parameters(e) for e in encoders) * size
    weights = weights_bytes if weights_bytes is not None else sum(
        parts[k] for k in ("transformer weights", "VAE weights", "text encoder weights"))

    # Text encoding: each encoder alone (they run one after the other), (tokens x (4 width + the MLP)) and
    # its attention scores (T5 computes them explicitly, in float32 with the position bias).
    encode = 0
    for e in encoders:
        tokens = 77 if e.model_class.startswith("CLIP") else (sequence or 256)
        encode = max(encode, tokens * (4 * e.width + (3 if e.gated else 2) * e.ff) * size + 3 * e.heads * tokens**2 * 4)
    parts["text encoding"] = encode

    # Denoising: one block at its peak, its input, the prompt embeddings, Flux's RoPE tables, the latents.
    d, head_dim = _width(transformer)
    n_image, n_text = image_tokens(source, width, height), text_tokens(source, sequence)
    tokens = n_image + n_text
    units = spec.image_activations * n_image + spec.text_activations * n_text + tokens
    if size < 4:
        units += costs.half_extra * tokens
    parts["block activations"] = int(units * d * batch * size)
    factor = 2 ** (len(vae.get("block_out_channels", (64,))) - 1)
    latents = int(vae.get("latent_channels", 4)) * (width // factor) * (height // factor)
    joint = int(transformer.get("joint_attention_dim", d))
    held = batch * n_text * joint * size + 8 * batch * latents * size  # embeddings; latents, noise, scheduler
    held += 2 * tokens * head_dim * 4 if spec.rope else 0  # cos and sin, float32
    parts["latents and embeddings"] = held
    parts["residual caches"] = cached_spans * 2 * tokens * d * batch * 4
    held += parts["residual caches"]
    phases: dict[str, int] = {"text encoding": encode, "denoising": parts["block activations"] + held}
    # The heap-sized share of each phase (see DeviceCosts): text encoding's tensors are small; a block's
    # widest tensor is its 4x MLP activation.
    heap = {"text encoding": encode,
            "denoising": phases["denoising"] if 4 * tokens * d * batch * size < costs.heap_chunk else held}

    if analysis:
        blocks = sum(stack.blocks for stack in source.layout.stacks)
        parts["similarity buffer"] = blocks * n_image * d * size + ANALYSIS_CHUNK_BYTES
        phases["similarity analysis"] = phases["denoising"] + parts["similarity buffer"]
        heap["similarity analysis"] = heap["denoising"]
    else:
        decoder = _Decoder(costs, 4 if upcast else size)
        decoder.walk(vae, width, height)
        image = int(vae.get("out_channels", 3)) * width * height
        # The postprocessing's float copies of the image (denormalized, x255, rounded; on the CPU).
        post = 4 * image * 4 if device_kind == "cpu" else 3 * image * decoder.size
        parts["VAE decode"] = decoder.peak
        parts["image postprocessing"] = post
        parts[f"decode peak at {decoder.where}"] = decoder.peak
        phases["VAE decode"] = max(decoder.peak, post) + held
        heap["VAE decode"] = max(decoder.heap, post if post < costs.heap_chunk else 0) + held

    allocator = int(costs.heap_slack * max(heap.values()))
    parts["allocator"] = allocator
    cumulative: tuple[str, ...] = ()
    if costs.reserve:  # CUDA: what the caching allocator reserves, phase after phase
        phases = {name: int(value * costs.reserve.get(name, 1.0)) for name, value in phases.items()}
        cumulative = tuple(name for name in phases if not (analysis and name == "denoising"))

    def resized(w: int, h: int) -> MemoryEstimate:
        return estimate(source, w, h, None, guidance, dtype, device_kind, max_sequence_length=max_sequence_length,
                        random_weights=random_weights, analysis=analysis, weights_bytes=weights_bytes,
                        cached_spans=cached_spans, quantization=quantization)

    return MemoryEstimate(source.name, width, height, device_kind, dtype, weights, costs.context, costs.runtime, allocator,
                          phases, parts, resized, cumulative)


# ----------------------------------------------------------------------------------------------- fit


def largest_fitting(estimate: MemoryEstimate, available: int, multiple: int, loaded: bool = False) -> tuple[int, int] | None:
    """The largest size of the estimate's shape (same aspect ratio, multiples of `multiple`) whose need is
    at most `available`; None when not even `multiple` x `multiple` fits."""
    width, height = estimate.width, estimate.height

    def sized(scale: float) -> tuple[int, int]:
        return (max(multiple, int(width * scale) // multiple * multiple),
                max(multiple, int(height * scale) // multiple * multiple))

    def fits(w: int, h: int) -> bool:
        return estimate.resized(w, h).need(loaded) <= available

    smallest = sized(0.0)
    if not fits(*smallest):
        return None
    low, high = 0.0, 1.0
    for _ in range(48):
        middle = (low + high) / 2
        if fits(*sized(middle)):
            low = middle
        else:
            high = middle
    return sized(low)


def check_fits(estimate: MemoryEstimate, available: int | None, *, loaded: bool = False, multiple: int = 16,
               where: str = "this machine") -> str | None:
    """None when the request fits in `available` bytes (or nothing is known about them), else one line:
    what it needs, its largest part, what there is, and the largest size of its shape that fits.
    `loaded`: the model is already in memory (the engine), so only the request's working memory counts."""
    if available is None:
        return None
    need = estimate.need(loaded)
    if need <= available:
        return None
    size = f"{estimate.width}x{estimate.height}"
    has = f"{where} has {format_bytes(available)} available"
    if not loaded and estimate.weights > available:
        return f"{estimate.model} needs about {format_bytes(estimate.weights)} for its weights alone but {has}"
    best = largest_fitting(estimate, available, multiple, loaded)
    hint = f"at most about {best[0]}x{best[1]}" if best is not None else "no size fits"
    return f"{size} needs {estimate.describe(loaded)} but {has}; {hint}"


def check_request(source: ModelSource, width: int, height: int, available: int | None, *, loaded: bool = False,
                  where: str = "this machine", **options: Any) -> str | None:
    """`estimate` then `check_fits`, with the model's size multiple: the one call a caller needs."""
    return check_fits(estimate(source, width, height, **options), available, loaded=loaded,
                      multiple=source.size_multiple, where=where)


# ------------------------------------------------------------------------------------------ available


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """What this process's memory cgroup still allows (v2, then v1), or None when it sets no limit."""
    root = Path("/sys/fs/cgroup")
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - usage)
    return None


def available_memory() -> int | None:
    """Bytes this machine can still give a process: /proc/meminfo's MemAvailable (the kernel's own
    estimate, page cache included), capped by a cgroup limit; sysconf's free pages where there is no
    /proc; None when nothing says."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            available = None
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available
