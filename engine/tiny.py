"""Tiny random-weight diffusers pipelines of the real classes, built fully offline.

The explorer needs real pipelines (the real transformer classes, block layouts and
call paths) to test against, but no checkpoint can be downloaded.  So every component
(tokenizers included) is constructed here from the family's declared TinySpec
(engine/core/families/), with weights drawn from a fixed seed, and the pipeline is
written with ``save_pretrained``.  The resulting folder
loads back with ``DiffusionPipeline.from_pretrained(folder, use_safetensors=True)``
exactly like a hub checkpoint, and a 64x64, 2-step generation runs on CPU in well
under a second.
"""

from __future__ import annotations

import contextlib
import pathlib
import string
from collections.abc import Iterator
from typing import Any

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTokenizer, T5Config, T5TokenizerFast, UMT5Config
from transformers.utils import logging as transformers_logging

from dit_explore.engine.core.catalog import TINY_VAE_BLOCKS
from dit_explore.engine.core.families import Family, TextEncoderSpec

# Re-seeding before every component makes each component's weights independent of
# how many random numbers the components built before it consumed.
_SEED = 0

# Real CLIP text encoders use 77 positions; the pipelines pad prompts to this length.
_CLIP_MAX_LENGTH = 77

# Shared shape of every tiny text encoder: two layers of two 16-wide heads.
_TEXT_LAYERS = 2
_TEXT_HEADS = 2
_TEXT_HEAD_DIM = 16


# --- tokenizers -------------------------------------------------------------------


def _clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer with no merges, so every character is its own token.

    The vocabulary is every byte-level character, alone and with the end-of-word
    suffix ``</w>`` that CLIP's BPE appends to the last piece of a word, plus the two
    special tokens; any prompt therefore tokenizes without unknowns.
    ``model_max_length`` must be set, otherwise truncation to it has no effect and
    long prompts overflow the 77 position embeddings.
    """
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = chars + [char + "</w>" for char in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def _t5_tokenizer() -> T5TokenizerFast:
    """A SentencePiece-like Unigram tokenizer over ASCII, shaped like T5's.

    Unigram is what ``T5TokenizerFast`` is built around; a WordLevel model does not
    survive save/load.  Ids 0/1/2 are pad/eos/unk as in real T5, and the
    post-processor appends ``</s>`` as T5 does.  Word-initial lowercase letters get
    their own slightly cheaper pieces so segmentation is not purely per character.
    """
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + char, -2.5) for char in string.ascii_lowercase]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )


# --- text encoders ----------------------------------------------------------------


def _clip_config(tokenizer: CLIPTokenizer, hidden_size: int, projection_dim: int) -> CLIPTextConfig:
    """CLIP text config matched to the tokenizer.

    The special-token ids must be the tokenizer's: CLIP pools the hidden state at the
    first ``eos_token_id`` position, so a wrong id silently pools the wrong token.
    """
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=hidden_size // _TEXT_HEAD_DIM,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_kwargs(tokenizer: T5TokenizerFast, d_model: int) -> dict[str, int]:
    """Shared T5/UMT5 config values; the special-token ids mirror the tokenizer's layout."""
    return {
        "vocab_size": len(tokenizer),
        "d_model": d_model,
        "d_kv": _TEXT_HEAD_DIM,
        "d_ff": 2 * d_model,
        "num_layers": _TEXT_LAYERS,
        "num_heads": _TEXT_HEADS,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }


_TOKENIZERS = {"clip": _clip_tokenizer, "t5": _t5_tokenizer}


def _text_encoder(spec: TextEncoderSpec, tokenizer: Any) -> torch.nn.Module:
    """The encoder a family's TextEncoderSpec names, its config matched to the tokenizer.

    CLIP encoders: Flux conditions on CLIPTextModel's pooled output (width `spec.width`), SD3 on the
    projected pooled outputs of CLIPTextModelWithProjection. T5 and UMT5 (AuraFlow's pipeline is typed
    against UMT5) have `d_model` equal to the transformer's joint_attention_dim.
    """
    config: Any
    if spec.tokenizer == "clip":
        config = _clip_config(tokenizer, spec.width, spec.projection or spec.width)
    elif spec.model_class.startswith("UMT5"):
        config = UMT5Config(**_t5_kwargs(tokenizer, spec.width))
    else:
        config = T5Config(**_t5_kwargs(tokenizer, spec.width))
    torch.manual_seed(_SEED)
    return getattr(transformers, spec.model_class)(config).eval()


# --- VAE and scheduler -------------------------------------------------------------


def _vae(scaling_factor: float, shift_factor: float | None) -> AutoencoderKL:
    """A 3-level AutoencoderKL with 4 latent channels.

    Three blocks give ``vae_scale_factor`` 4 (the pipelines derive it from
    ``len(block_out_channels)``), so a 64x64 image is a 16x16 latent.  The quant convs
    are dropped as in Flux/SD3; scaling and shift follow the family being imitated.
    """
    torch.manual_seed(_SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(TINY_VAE_BLOCKS),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def _scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    """Flow-matching Euler scheduler with a static shift (no resolution-dependent shift)."""
    return FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=False)


# --- families -----------------------------------------------------------------------


def _plant_layer_structure(stacks: list[torch.nn.ModuleList], quiet: float, loud: float) -> None:
    """Give the tiny transformer the layer structure the study looks for.

    Freshly initialized tiny blocks barely touch the residual stream (every pair of block outputs has
    cosine ~0.999), so skipping or reordering them changes nothing visible and the similarity analysis
    sees no groups. Scaling each block's adaptive-norm modulation (which sets its gates, hence how much
    it writes to the stream) by `quiet`, and by `loud` for block 1, the middle block and the last block
    of stacks of six or more (the last block alone otherwise), makes those blocks boundaries: block 0
    stands alone like a "translation" layer, two middle groups follow, and the last block stands alone.
    The analysis still measures all of this; it is a property of these weights, like any model's.
    """
    with torch.no_grad():
        for blocks in stacks:
            n = len(blocks)
            loud_at = {1, n // 2, n - 1} if n >= 6 else {n - 1}
            for i, block in enumerate(blocks):
                factor = loud if i in loud_at else quiet
                for name, module in block.named_modules():
                    if name.startswith("norm") and name.endswith("linear") and isinstance(module, torch.nn.Linear):
                        module.weight.mul_(factor)
                        if module.bias is not None:
                            module.bias.mul_(factor)


def build_pipeline(of: Family) -> Any:
    """The tiny pipeline a family declares (its TinySpec), built in memory: the family's real transformer
    and pipeline classes with random weights from a fixed seed, and the structure planted."""
    spec = of.tiny
    components: dict[str, Any] = {}
    for encoder in spec.text_encoders:
        tokenizer = _TOKENIZERS[encoder.tokenizer]()
        components[encoder.tokenizer_slot] = tokenizer
        components[encoder.slot] = _text_encoder(encoder, tokenizer)
    torch.manual_seed(_SEED)
    transformer = getattr(diffusers, of.transformer_class)(**spec.transformer).eval()
    quiet, loud = spec.structure
    _plant_layer_structure([getattr(transformer, s.attr) for s in of.stacks], quiet, loud)
    components.update(transformer=transformer, vae=_vae(spec.vae_scaling, spec.vae_shift),
                      scheduler=_scheduler(spec.scheduler_shift))
    return getattr(diffusers, of.pipeline_class)(**components)


@contextlib.contextmanager
def _without_transformers_progress_bars() -> Iterator[None]:
    """Hide transformers' per-component "Writing model shards" bars while saving.

    Each tiny component is one small shard, so the bars carry no information and only
    clutter stderr; the caller's previous setting is restored afterwards.
    """
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def build_tiny_pipeline(of: Family, out_dir: pathlib.Path) -> None:
    """Build the family's tiny pipeline and save_pretrained it into out_dir.

    ``out_dir`` must not exist yet; it is created here, so a half-written folder from
    another run is never silently mixed in.  Deterministic: same bytes of weights every
    time (torch.manual_seed before each component).
    """
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    pipeline = build_pipeline(of)
    out_dir.mkdir(parents=True)
    with _without_transformers_progress_bars():
        pipeline.save_pretrained(out_dir, safe_serialization=True)
