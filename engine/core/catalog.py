"""The models dit-explore knows by name: aliases, Hugging Face repos, shipped configs, sampling defaults.

Torch-free. The transformer and VAE configs are those the real repositories ship (their config.json
files); they give layouts without a download and let `--random-weights` build the real-size
architecture. A model family's entries name it by `family` (engine/core/families/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dit_explore.engine.core.families import Defaults, Family, family
from dit_explore.engine.core.layout import Layout

DEFAULT_MODEL = "toy-flux"  # trained, shipped, CPU-fast: a fresh machine shows real images (docs/toy-models.md)
DEFAULT_PROMPT = "a lighthouse on a rocky coast at dusk, waves breaking, warm light in the window"
TOY_PROMPT = "a large red circle at the top left"  # a caption of the toy models' grammar (engine/core/shapes.py)


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    family: str  # the name of its model family (engine/core/families/)
    repo: str | None  # None for the built-in tiny models
    transformer: Mapping[str, Any]
    vae: Mapping[str, Any] = field(default_factory=dict)
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    defaults: Defaults = Defaults(steps=28, guidance=3.5)
    description: str = ""
    toy: bool = False  # a trained toy model shipped in the package (engine/toys/<alias>/; repo is None)

    @property
    def layout(self) -> Layout:
        return family(self.family).layout(self.transformer)

    @property
    def tiny(self) -> bool:
        return self.repo is None


def _vae(latent: int, scaling: float, shift: float | None, quant: bool) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent,
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 1024,
        "scaling_factor": scaling,
        "shift_factor": shift,
        "use_quant_conv": quant,
        "use_post_quant_conv": quant,
        "force_upcast": True,
    }


_FLUX = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
}
_SD3_MEDIUM = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}
_AURAFLOW = {
    "sample_size": 64,
    "patch_size": 2,
    "in_channels": 4,
    "num_mmdit_layers": 4,
    "num_single_dit_layers": 32,
    "attention_head_dim": 256,
    "num_attention_heads": 12,
    "joint_attention_dim": 2048,
    "caption_projection_dim": 3072,
    "out_channels": 4,
    "pos_embed_max_size": 9216,
}
_FLOW = {"num_train_timesteps": 1000}
TINY_VAE_BLOCKS = [16, 32, 32]  # the tiny pipelines' VAE (engine/tiny.py): a 4x downsampling


def tiny_model(alias: str, of: Family, description: str) -> ModelSpec:
    """The catalog entry of a family's built-in tiny pipeline (its TinySpec; engine/tiny.py builds it)."""
    return ModelSpec(alias, of.name, None, dict(of.tiny.transformer), {"block_out_channels": TINY_VAE_BLOCKS},
                     {**_FLOW, "shift": of.tiny.scheduler_shift}, of.tiny.defaults, description)

# The trained toy models ship as diffusers folders inside the package (engine/toy.py trains them).
TOYS_DIR = Path(__file__).resolve().parents[1] / "toys"
# Their autoencoder: the exact space-to-depth one (engine/toy_autoencoder.py), as its config.json says.
TOY_VAE = {"_class_name": "SpaceToDepthAutoencoder", "in_channels": 3, "block_out_channels": [3, 12],
           "latent_channels": 12, "scaling_factor": 1.0, "shift_factor": 0.0, "force_upcast": False, "sample_size": 64}


def toy_folder(alias: str) -> Path:
    """Where a toy model's trained pipeline folder ships (it may not exist yet: not trained)."""
    return TOYS_DIR / alias


def toy_model(alias: str, of: Family, description: str) -> ModelSpec:
    """The catalog entry of a family's trained toy model (its ToySpec; engine/toy.py trains it)."""
    if of.toy is None:
        raise ValueError(f"the {of.name} family declares no toy model")
    return ModelSpec(alias, of.name, None, dict(of.toy.transformer), dict(TOY_VAE),
                     {**_FLOW, "shift": of.toy.scheduler_shift, "use_dynamic_shifting": False}, of.toy.defaults,
                     description, toy=True)


MODELS: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in (
        ModelSpec(
            "flux-schnell",
            "flux",
            "black-forest-labs/FLUX.1-schnell",
            {**_FLUX, "guidance_embeds": False},
            _vae(16, 0.3611, 0.1159, quant=False),
            {**_FLOW, "shift": 1.0, "use_dynamic_shifting": False},
            Defaults(steps=4, guidance=0.0, max_sequence_length=256),
            "FLUX.1 [schnell], 12B, 4-step distilled",
        ),
        ModelSpec(
            "flux-dev",
            "flux",
            "black-forest-labs/FLUX.1-dev",
            {**_FLUX, "guidance_embeds": True},
            _vae(16, 0.3611, 0.1159, quant=False),
            {
                **_FLOW,
                "shift": 3.0,
                "use_dynamic_shifting": True,
                "base_shift": 0.5,
                "max_shift": 1.15,
                "base_image_seq_len": 256,
                "max_image_seq_len": 4096,
            },
            Defaults(steps=28, guidance=3.5, max_sequence_length=512),
            "FLUX.1 [dev], 12B, guidance-distilled (gated repo)",
        ),
        ModelSpec(
            "sd3-medium",
            "sd3",
            "stabilityai/stable-diffusion-3-medium-diffusers",
            _SD3_MEDIUM,
            _vae(16, 1.5305, 0.0609, quant=False),
            {**_FLOW, "shift": 3.0},
            Defaults(steps=28, guidance=7.0, max_sequence_length=256),
            "Stable Diffusion 3 Medium, 2B MMDiT (gated repo)",
        ),
        ModelSpec(
            "sd3.5-large",
            "sd3",
            "stabilityai/stable-diffusion-3.5-large",
            {
                **_SD3_MEDIUM,
                "num_layers": 38,
                "num_attention_heads": 38,
                "caption_projection_dim": 2432,
                "qk_norm": "rms_norm",
            },
            _vae(16, 1.5305, 0.0609, quant=False),
            {**_FLOW, "shift": 3.0},
            Defaults(steps=28, guidance=3.5, max_sequence_length=256),
            "Stable Diffusion 3.5 Large, 8B MMDiT (gated repo)",
        ),
        ModelSpec(
            "auraflow",
            "auraflow",
            "fal/AuraFlow-v0.3",
            _AURAFLOW,
            _vae(4, 0.13025, None, quant=True),
            {**_FLOW, "shift": 1.73},
            Defaults(steps=50, guidance=3.5, max_sequence_length=256),
            "AuraFlow v0.3, 6.8B",
        ),
        ModelSpec(
            "auraflow-v0.2",
            "auraflow",
            "fal/AuraFlow-v0.2",
            {**_AURAFLOW, "pos_embed_max_size": 1024},
            _vae(4, 0.13025, None, quant=True),
            {**_FLOW, "shift": 1.73},
            Defaults(steps=50, guidance=3.5, max_sequence_length=256),
            "AuraFlow v0.2, 6.8B",
        ),
        # Built-in tiny models: random weights of the real classes, built locally (engine/tiny.py).
        tiny_model("tiny-flux", family("flux"), "random tiny Flux for fast tests (planted structure, noise images)"),
        tiny_model("tiny-sd3", family("sd3"), "random tiny SD3 for fast tests (planted structure, noise images)"),
        tiny_model("tiny-auraflow", family("auraflow"), "random tiny AuraFlow for fast tests (planted structure, noise images)"),
        # Trained toy models: the real classes, trained on captioned shapes (engine/core/shapes.py).
        toy_model("toy-flux", family("flux"), "toy Flux trained on captioned shapes (64x64, 6+12 blocks)"),
        toy_model("toy-sd3", family("sd3"), "toy SD3 trained on captioned shapes (64x64, 12 blocks)"),
        toy_model("toy-auraflow", family("auraflow"), "toy AuraFlow trained on captioned shapes (64x64, 2+12 blocks)"),
    )
}

def register_model(spec: ModelSpec) -> ModelSpec:
    """Make an alias known (a family's catalog entries from outside this file: a plugin, a test)."""
    family(spec.family)  # an unknown family is an error now, not when the model is used
    if spec.alias in MODELS and MODELS[spec.alias] != spec:
        raise ValueError(f"model alias {spec.alias!r} is already taken")
    MODELS[spec.alias] = spec
    return spec


def spec_for_repo(repo: str) -> ModelSpec | None:
    for spec in MODELS.values():
        if spec.repo == repo:
            return spec
    return None


def is_toy(model: str) -> bool:
    """Whether `model` names one of the trained toy models (they know only the shapes grammar)."""
    spec = MODELS.get(model)
    return spec is not None and spec.toy


def default_prompt(model: str) -> str:
    """The prompt a run of `model` gets when none is given: a caption of the shapes grammar for the toy
    models (the only words they know), a scene for every other model."""
    return TOY_PROMPT if is_toy(model) else DEFAULT_PROMPT


# Five captions for the toy models' default similarity analysis: every size, colour, shape and a spread
# of positions, so the average is not the fingerprint of one drawing.
TOY_ANALYSIS_PROMPTS = (
    "a large red circle at the top left",
    "a small green square at the center",
    "a large blue triangle at the bottom right",
    "a small yellow circle at the right",
    "a large magenta square at the top",
)


def analysis_prompts(model: str, general: tuple[str, ...]) -> tuple[str, ...]:
    """The prompts a default similarity analysis of `model` averages over: captions for the toy models,
    `general` (engine/core/similarity.py's DEFAULT_PROMPTS) for every other model."""
    return TOY_ANALYSIS_PROMPTS if is_toy(model) else general


def vocabulary(model: str) -> str | None:
    """For a toy model, the grammar and words it knows, as one line; None for any other model (their
    vocabularies are open)."""
    if not is_toy(model):
        return None
    from dit_explore.engine.core.shapes import COLORS, POSITIONS, SHAPES, SIZES

    return (f"'a {{size}} {{color}} {{shape}} at the {{position}}' with size {'/'.join(SIZES)}, color "
            f"{'/'.join(COLORS)}, shape {'/'.join(SHAPES)}, position {'/'.join(POSITIONS)}")


def unseen_words(model: str, prompt: str) -> str | None:
    """For a toy model, one line naming the words of `prompt` it never saw in training, and the grammar it
    knows; None when it saw them all, or for any other model (their vocabularies are open)."""
    known = vocabulary(model)
    if known is None:
        return None
    from dit_explore.engine.core.shapes import unknown_words

    unknown = unknown_words(prompt)
    if not unknown:
        return None
    return (f"{model} never saw {', '.join(repr(w) for w in unknown[:8])}{' …' if len(unknown) > 8 else ''}: it "
            f"draws {known}")
