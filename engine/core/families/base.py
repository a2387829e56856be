"""What a model family is: everything that differs between Flux, SD3, AuraFlow (and the next one), in one
class whose subclasses live one per file in this folder.

A family declares its facts as data, the way diffusers declares `_repeated_blocks` and registers block
output layouts (`TransformerBlockRegistry`) instead of guessing them: its block stacks and how their sizes
come from the transformer config, what each stack's blocks take positionally and return (`BlockIO`),
its pipeline and transformer classes, text-encoder slots, sampling defaults, preview factors, size rules
and the tiny pipeline the test suite builds. The few behaviours that differ (prompt encoding, latent
unpacking, the arithmetic before the VAE decode) are small methods that call the pipeline's own
methods.

Torch-free by construction: tensors arrive as arguments and are only indexed, sliced or passed on, so
the TUI process can ask a family for layouts and size rules without importing torch. The engine process
does the torch work around these answers (engine/generate.py, engine/executor.py, engine/tiny.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from dit_explore.engine.core.layout import Layout, Stack


class FamilyError(ValueError):
    """An unknown family, or a model that breaks what its family declares; one line for the user."""


class BlockLayoutError(FamilyError):
    """A block returned something other than its family declares (a diffusers upgrade changed it?)."""


@dataclass(frozen=True)
class BlockIO:
    """How the model's forward loop calls the blocks of one stack, and what they return.

    `inputs` are the stream arguments in the block's positional order; `outputs` name what the block
    returns, in order (one name: a bare tensor, several: a tuple). `image` names the output that holds
    the image tokens; with `text_first` that output is one joint sequence, the text tokens first and
    the image tokens last (AuraFlow's single blocks).
    """

    inputs: tuple[str, ...] = ("hidden_states", "encoder_hidden_states")
    outputs: tuple[str, ...] = ("encoder_hidden_states", "hidden_states")
    image: str = "hidden_states"
    text_first: bool = False

    def streams(self, out: Any, where: str) -> dict[str, Any]:
        """A block's output by stream name; raises BlockLayoutError if its shape is not the declared one."""
        if len(self.outputs) == 1:
            if isinstance(out, tuple):
                raise BlockLayoutError(f"{where} returned a tuple of {len(out)}, but its family declares one "
                                       f"tensor ({self.outputs[0]}); did a diffusers upgrade change the block?")
            return {self.outputs[0]: out}
        if not isinstance(out, tuple) or len(out) != len(self.outputs):
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise BlockLayoutError(f"{where} returned {got}, but its family declares ({', '.join(self.outputs)}); "
                                   f"did a diffusers upgrade change the block?")
        return dict(zip(self.outputs, out))

    def image_tokens(self, out: Any, image_tokens: int, where: str) -> Any:
        """The image tokens of a block's output, (batch, tokens, width)."""
        hidden = self.streams(out, where)[self.image]
        return hidden[:, -image_tokens:] if self.text_first else hidden

    def feed_back(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any,
                  where: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of the next call of a looped group: the output streams replace the input streams
        of the same name (by keyword, or at their declared position); everything else is kept."""
        streams = self.streams(out, where)
        new_args, new_kwargs = list(args), dict(kwargs)
        for position, name in enumerate(self.inputs):
            if name not in streams:
                continue
            if name in new_kwargs:
                new_kwargs[name] = streams[name]
            elif position < len(new_args):
                new_args[position] = streams[name]
            else:
                raise BlockLayoutError(f"{where}: cannot feed back {name}: the block was called without it")
        return tuple(new_args), new_kwargs


@dataclass(frozen=True)
class StackSpec:
    """One block stack of a family: its plan key, the transformer attribute holding its ModuleList, the
    config key of its size (and diffusers' default for it), its block class, and the blocks' I/O."""

    name: str
    attr: str
    count_key: str
    default_count: int
    block_class: str
    io: BlockIO = BlockIO()
    pre_only_last: bool = False  # the last block returns no text stream (SD3): it may only end the stack


@dataclass(frozen=True)
class Defaults:
    """What a user of this model would pass to the pipeline if they said nothing."""

    steps: int
    guidance: float
    width: int = 1024
    height: int = 1024
    max_sequence_length: int | None = None  # passed to encode_prompt where the family takes it


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a tiny pipeline: its pipeline slots, its transformers class, its tokenizer kind
    ("clip": byte-level BPE, "t5": Unigram) and its width (plus the CLIP projection width, if any)."""

    slot: str
    tokenizer_slot: str
    model_class: str  # CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, UMT5EncoderModel
    tokenizer: str
    width: int
    projection: int | None = None


@dataclass(frozen=True)
class TinySpec:
    """The built-in tiny pipeline of a family: random weights of the real classes (engine/tiny.py)."""

    transformer: Mapping[str, Any]  # constructor arguments of the family's transformer class
    text_encoders: tuple[TextEncoderSpec, ...]
    vae_scaling: float
    vae_shift: float | None
    scheduler_shift: float
    # Modulation scale of quiet and of loud blocks: gives the tiny model layer structure (engine/tiny.py).
    structure: tuple[float, float] = (2.0, 24.0)
    defaults: Defaults = Defaults(steps=2, guidance=0.0, width=64, height=64, max_sequence_length=32)


@dataclass(frozen=True)
class ToySpec:
    """The trained toy pipeline of a family: the family's real transformer and pipeline classes, trained on
    the captioned shapes of engine/core/shapes.py by engine/toy.py, shipped in engine/toys/<alias>/.

    Deep enough for first, middle and last blocks to mean something, narrow enough that the three toys
    together stay within 40 MB in bf16 (tests/engine/test_toy.py counts them). Around the transformer:
    frozen random tiny text encoders (as the tiny models', with whole-word vocabularies:
    engine/core/toy_vocab.py) and the exact space-to-depth autoencoder (engine/toy_autoencoder.py), whose
    latents are 2x2 pixels x RGB = 12 channels (48 where the pipeline packs 2x2 latents into a token)."""

    transformer: Mapping[str, Any]  # constructor arguments of the family's transformer class
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler_shift: float = 1.0  # static shift of the flow-matching sampler (no dynamic shifting)
    target: float = 0.80  # all-correct accuracy over the 324 captions at 20 steps the trained model must reach
    # 20 steps, no classifier-free guidance (trained with 10% empty captions, so guidance > 1 works too).
    defaults: Defaults = Defaults(steps=20, guidance=0.0, width=64, height=64, max_sequence_length=16)


@dataclass(frozen=True)
class EmbeddingShape:
    """One pipeline keyword argument of pseudo-embeddings (--random-weights): its shape, and whether it
    is an attention mask of ones rather than random values."""

    shape: tuple[int, ...]
    mask: bool = False


@dataclass(frozen=True)
class TextEncoderShape:
    """A real pipeline's text encoder as its config.json describes it: enough to count its parameters
    without loading it (engine/core/memory.py). T5 and UMT5: `ff` is d_ff, `head_dim` d_kv, `gated` a
    gated feed-forward (wi_0 and wi_1); CLIP: `positions` and the projection width, if any."""

    model_class: str  # CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, UMT5EncoderModel
    vocab: int
    width: int
    layers: int
    ff: int
    heads: int
    head_dim: int = 0  # 0: width // heads
    positions: int = 77
    projection: int | None = None
    gated: bool = False


@dataclass(frozen=True)
class MemorySpec:
    """What the memory estimator (engine/core/memory.py) needs beyond the configs, per family.

    Activations: the live tensors at the peak of one block (its input not counted), in units of one
    (tokens x width) tensor of the model's dtype, per image token and per text token, for the worst of
    the family's stacks; measured on CPU at real width with `python -m dit_explore.engine.memory_bench
    --blocks` (see BENCHMARKS.md). `text_encoders`: the real pipeline's encoders, for their parameter
    count (the tiny pipelines' are derived from their TinySpec)."""

    image_activations: float
    text_activations: float
    text_encoders: tuple[TextEncoderShape, ...] = ()
    register_tokens: int = 0  # tokens the transformer prepends to the text (AuraFlow)
    rope: bool = False  # rotary embeddings (cos, sin) in float32 held for the whole forward (Flux)


# (latent channels x RGB) factors and an RGB bias, for previews from latents without the VAE.
PreviewFactors = tuple[Sequence[Sequence[float]], Sequence[float]]

# The toy models' space-to-depth latents (engine/toy_autoencoder.py): channel c*4 + k is colour c of the k-th
# pixel of a 2x2 block, scaled as the pixels ([-1, 1]), so the average of each colour's four is the exact
# downscaled image.
SPACE_TO_DEPTH_PREVIEW: PreviewFactors = ([[0.25 if row // 4 == c else 0.0 for c in range(3)] for row in range(12)],
                                          [0.0, 0.0, 0.0])


class Family:
    """Base class of the model families. A subclass sets the class attributes and overrides the methods
    where its pipeline differs; one instance per family is registered (see families/__init__.py)."""

    name: ClassVar[str]
    pipeline_class: ClassVar[str]  # diffusers pipeline class (model_index.json "_class_name")
    transformer_class: ClassVar[str]
    stacks: ClassVar[tuple[StackSpec, ...]]
    text_slots: ClassVar[tuple[str, ...]]  # pipeline components that are text encoders and tokenizers
    defaults: ClassVar[Defaults]
    preview_factors: ClassVar[Mapping[int, PreviewFactors]] = {}  # by latent channel count
    tiny: ClassVar[TinySpec]
    toy: ClassVar[ToySpec | None] = None  # the trained toy model of this family, if it has one
    # Diffusers' default patch size of the transformer config, and whether the pipeline packs 2x2 latent
    # patches into tokens itself (Flux) instead of the transformer patchifying them.
    default_patch_size: ClassVar[int] = 2
    packs_latents: ClassVar[bool] = False
    # The memory estimator's facts (engine/core/memory.py); None: this family's requests are not estimated.
    memory: ClassVar[MemorySpec | None] = None
    # How the pipeline batches classifier-free guidance: the passes of the doubled batch in order (SD3's
    # and AuraFlow's pipelines concatenate the negative prompt's embeddings first); None: the family runs
    # no CFG, so a plan's [uncond] and [extra] tables cannot apply (engine/branches.py splits by this).
    guidance_halves: ClassVar[tuple[str, str] | None] = ("uncond", "cond")

    # ---------------------------------------------------------------------------------- layout

    def layout(self, config: Mapping[str, Any]) -> Layout:
        """The stacks of a transformer, read from its config.json (diffusers' defaults where absent)."""
        return Layout(self.name, tuple(
            Stack(s.name, s.attr, int(config.get(s.count_key, s.default_count)), s.pre_only_last)
            for s in self.stacks))

    def stack(self, name: str) -> StackSpec:
        for spec in self.stacks:
            if spec.name == name:
                return spec
        raise FamilyError(f"the {self.name} family has no stack {name!r} (it has: "
                          f"{', '.join(s.name for s in self.stacks)})")

    def transformer_parameters(self, config: Mapping[str, Any]) -> int | None:
        """The transformer's parameter count from its config.json (diffusers' defaults where absent),
        written out from the class's layers; None where the family does not declare it. Checked against
        the real classes on the meta device by tests/engine/test_memory.py."""
        split = self.transformer_parameter_split(config)
        return None if split is None else sum(split)

    def transformer_parameter_split(self, config: Mapping[str, Any]) -> tuple[int, int] | None:
        """(parameters outside the blocks, parameters in the blocks) of `transformer_parameters`; the blocks'
        are what `--quantize` stores in 8 bits. None where the family does not declare it."""
        counts = self.block_parameters(config)
        return None if counts is None else (counts[0], sum(sum(stack) for stack in counts[1].values()))

    def block_parameters(self, config: Mapping[str, Any]) -> tuple[int, dict[str, list[int]]] | None:
        """(parameters outside the blocks, each stack's blocks' parameter counts in model order): what the
        memory plan (engine/core/placement.py) keeps on the device or streams in, block by block. None where
        the family does not declare it."""
        return None

    # ------------------------------------------------------------------------------- size rules

    def size_multiple(self, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> int:
        """Width and height must be multiples of this: VAE downsampling times the patch size."""
        vae_scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        patch = 2 if self.packs_latents else int(transformer.get("patch_size", self.default_patch_size))
        return vae_scale * patch

    def max_side(self, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> int | None:
        """Largest width or height the positional embedding covers; None if unbounded."""
        return None

    # -------------------------------------------------------------------------------- sampling

    def uses_cfg(self, guidance: float) -> bool:
        """Whether the pipeline runs classifier-free guidance (a doubled batch) at this guidance scale."""
        return guidance > 1.0

    def encode_prompt(self, pipe: Any, prompt: str, cfg: bool, max_sequence_length: int | None,
                      device: Any) -> dict[str, Any]:
        """The pipeline's own encode_prompt, returned as the keyword arguments its __call__ takes."""
        raise NotImplementedError

    def pseudo_embeddings(self, config: Mapping[str, Any], sequence: int, cfg: bool) -> dict[str, EmbeddingShape]:
        """Shapes of stand-ins for encode_prompt's outputs (--random-weights: no text encoder loaded)."""
        raise NotImplementedError

    def transformer_kwargs(self, pipe: Any, latents: Any, sigma: Any, embeds: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments the pipeline's loop passes its transformer at noise level `sigma` (batch,
        in [0, 1]) for spatial `latents` (batch, channels, h, w) and `embeds` (encode_prompt's, as returned
        above): training (engine/toy.py) calls the transformer exactly as sampling will. Its output, in
        the pipeline's latent layout, is the velocity noise - latents (family.spatial_latents makes it
        spatial)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- latents

    def spatial_latents(self, pipe: Any, latents: Any, width: int, height: int) -> Any:
        """Latents as the pipeline returns them, as (batch, channels, h, w)."""
        return latents

    def latents_for_vae(self, pipe: Any, latents: Any, width: int, height: int) -> Any:
        """What the pipeline hands its VAE after the loop (the same arithmetic, so images match)."""
        config = pipe.vae.config
        latents = self.spatial_latents(pipe, latents, width, height) / config.scaling_factor
        return latents + config.shift_factor if config.shift_factor is not None else latents

    # The pipeline upcasts a float16 VAE before decoding when its config asks for it (AuraFlow).
    upcasts_vae: ClassVar[bool] = False

    def preview(self, channels: int) -> PreviewFactors | None:
        return self.preview_factors.get(channels)
