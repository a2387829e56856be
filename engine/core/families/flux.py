"""FLUX.1 (schnell, dev): a double-stream MMDiT stack, then a single-stream stack.

The pipeline packs 2x2 latent patches into one token itself (the transformer's patch size is 1, its
in_channels four times the VAE's latent channels), so sizes are multiples of twice the VAE factor and
latents come back packed. FLUX.1 is guidance-distilled: no classifier-free guidance, ever; flux-dev
feeds the guidance scale to the transformer instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dit_explore.engine.core.families.base import (
    SPACE_TO_DEPTH_PREVIEW,
    BlockIO,
    Defaults,
    EmbeddingShape,
    Family,
    MemorySpec,
    StackSpec,
    TextEncoderShape,
    TextEncoderSpec,
    TinySpec,
    ToySpec,
)


def _linear(inputs: int, outputs: int, bias: bool = True) -> int:
    return inputs * outputs + (outputs if bias else 0)


# Since diffusers 0.35 single blocks take and return both streams, like the double blocks.
_STREAMS = BlockIO(inputs=("hidden_states", "encoder_hidden_states"), outputs=("encoder_hidden_states", "hidden_states"))


class Flux(Family):
    name = "flux"
    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"
    stacks = (
        StackSpec("double", "transformer_blocks", "num_layers", 19, "FluxTransformerBlock", _STREAMS),
        StackSpec("single", "single_transformer_blocks", "num_single_layers", 38, "FluxSingleTransformerBlock",
                  _STREAMS),
    )
    text_slots = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    defaults = Defaults(steps=28, guidance=3.5, max_sequence_length=512)
    packs_latents = True
    default_patch_size = 1
    # The widely used least-squares fit of FLUX.1's 16 latent channels to RGB.
    preview_factors = {16: (
        [
            [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
            [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
            [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
            [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
            [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
            [-0.1262, -0.0982, -0.0778],
        ],
        [-0.0329, -0.0718, -0.0851],
    ), 12: SPACE_TO_DEPTH_PREVIEW}
    # CLIP pooled vector + T5 sequence; in_channels is 4x the tiny VAE's 4 latent channels, and the RoPE
    # axes sum to the head dimension.
    tiny = TinySpec(
        transformer={"patch_size": 1, "in_channels": 16, "num_layers": 4, "num_single_layers": 8,
                     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                     "pooled_projection_dim": 32, "guidance_embeds": False, "axes_dims_rope": (4, 6, 6)},
        text_encoders=(
            TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "clip", 32),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "T5EncoderModel", "t5", 32),
        ),
        vae_scaling=0.3611,
        vae_shift=0.1159,
        scheduler_shift=1.0,
        structure=(2.0, 24.0),
        defaults=Defaults(steps=2, guidance=0.0, width=64, height=64, max_sequence_length=32),
    )

    # toy-flux: 6 double + 12 single blocks of 2 heads x 64 (6.66M parameters); 48 = 4 x 12 space-to-depth
    # channels, packed 2x2 by the pipeline into 256 tokens at 64x64. CLIP's pooled vector + T5's sequence.
    toy = ToySpec(
        transformer={"patch_size": 1, "in_channels": 48, "num_layers": 6, "num_single_layers": 12,
                     "attention_head_dim": 64, "num_attention_heads": 2, "joint_attention_dim": 64,
                     "pooled_projection_dim": 64, "guidance_embeds": False, "axes_dims_rope": (16, 24, 24)},
        text_encoders=(
            TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "clip", 64),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "T5EncoderModel", "t5", 64),
        ),
        scheduler_shift=1.0,
        target=0.85,
    )

    guidance_halves = None  # guidance-distilled: no classifier-free guidance, no doubled batch

    def uses_cfg(self, guidance: float) -> bool:
        return False

    # Memory (engine/core/memory.py). Measured peaks of one block, fp32 on CPU, in (tokens x width) units:
    # single blocks 14.0 x (image + text tokens), double blocks 12.0 x image + 2.0 x text; CLIP-L and T5-XXL.
    memory = MemorySpec(image_activations=14.5, text_activations=14.5, rope=True, text_encoders=(
        TextEncoderShape("CLIPTextModel", 49408, 768, 12, 3072, 12),
        TextEncoderShape("T5EncoderModel", 32128, 4096, 24, 10240, 64, head_dim=64, gated=True),
    ))

    def block_parameters(self, config: Mapping[str, Any]) -> tuple[int, dict[str, list[int]]] | None:
        head_dim = int(config.get("attention_head_dim", 128))
        d = int(config.get("num_attention_heads", 24)) * head_dim
        cin = int(config.get("in_channels", 64))
        out = int(config.get("patch_size", 1)) ** 2 * int(config.get("out_channels") or cin)
        timestep = _linear(256, d) + _linear(d, d)  # TimestepEmbedding (and the guidance embedder: the same)
        embedders = (timestep * (2 if config.get("guidance_embeds", False) else 1)
                     + _linear(int(config.get("pooled_projection_dim", 768)), d) + _linear(d, d)
                     + _linear(int(config.get("joint_attention_dim", 4096)), d) + _linear(cin, d))
        # Double: two AdaLayerNormZero (6d), eight d x d projections, two 4x GELU MLPs, q/k RMSNorms.
        double = 2 * _linear(d, 6 * d) + 8 * _linear(d, d) + 2 * (_linear(d, 4 * d) + _linear(4 * d, d)) + 4 * head_dim
        # Single: AdaLayerNormZeroSingle (3d), q/k/v, the 4x MLP in, one projection out of attention + MLP.
        single = _linear(d, 3 * d) + 3 * _linear(d, d) + _linear(d, 4 * d) + _linear(5 * d, d) + 2 * head_dim
        return embedders + _linear(d, 2 * d) + _linear(d, out), {
            "double": [double] * int(config.get("num_layers", 19)), "single": [single] * int(config.get("num_single_layers", 38))}

    def encode_prompt(self, pipe: Any, prompt: str, cfg: bool, max_sequence_length: int | None,
                      device: Any) -> dict[str, Any]:
        extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
        embeds, pooled, _ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, **extra)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def pseudo_embeddings(self, config: Mapping[str, Any], sequence: int, cfg: bool) -> dict[str, EmbeddingShape]:
        return {"prompt_embeds": EmbeddingShape((1, sequence, int(config["joint_attention_dim"]))),
                "pooled_prompt_embeds": EmbeddingShape((1, int(config["pooled_projection_dim"])))}

    def transformer_kwargs(self, pipe: Any, latents: Any, sigma: Any, embeds: Mapping[str, Any]) -> dict[str, Any]:
        # The pipeline packs the latents, gives text positions all zero, and passes sigma (its t / 1000).
        b, c, h, w = latents.shape
        text = embeds["prompt_embeds"]
        return {"hidden_states": pipe._pack_latents(latents, b, c, h, w), "timestep": sigma, "guidance": None,
                "pooled_projections": embeds["pooled_prompt_embeds"], "encoder_hidden_states": text,
                "txt_ids": text.new_zeros((text.shape[1], 3)),
                "img_ids": pipe._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, text.dtype)}

    def spatial_latents(self, pipe: Any, latents: Any, width: int, height: int) -> Any:
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


FAMILY = Flux()
