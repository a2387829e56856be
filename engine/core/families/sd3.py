"""Stable Diffusion 3 / 3.5: one MMDiT stack whose last block is "context pre-only".

That last block returns no text stream (diffusers returns None for it), so a plan may skip it or run it
once as the very last item, nothing else (`pre_only_last`). Text: two CLIPs and T5, CLIP sequences first.
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

_CLIP_TOKENS = 77


def _linear(inputs: int, outputs: int, bias: bool = True) -> int:
    return inputs * outputs + (outputs if bias else 0)


class SD3(Family):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    transformer_class = "SD3Transformer2DModel"
    # SD3Transformer2DModel builds block i with context_pre_only=(i == num_layers - 1).
    stacks = (
        StackSpec("double", "transformer_blocks", "num_layers", 18, "JointTransformerBlock",
                  BlockIO(inputs=("hidden_states", "encoder_hidden_states"),
                          outputs=("encoder_hidden_states", "hidden_states")),
                  pre_only_last=True),
    )
    text_slots = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    defaults = Defaults(steps=28, guidance=7.0, max_sequence_length=256)
    preview_factors = {16: (
        [
            [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
            [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
            [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
            [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
            [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
            [-0.1448, -0.1463, -0.1189],
        ],
        [0.2394, 0.2135, 0.1925],
    ), 12: SPACE_TO_DEPTH_PREVIEW}
    # The two CLIP hidden states (32 + 32) are concatenated and zero-padded to the T5 width, so
    # joint_attention_dim (64) is at least their sum; the pooled vector is both projections (32 + 32).
    tiny = TinySpec(
        transformer={"sample_size": 16, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 6,
                     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 64,
                     "caption_projection_dim": 32, "pooled_projection_dim": 64, "pos_embed_max_size": 32},
        text_encoders=(
            TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModelWithProjection", "clip", 32, projection=32),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "clip", 32, projection=32),
            TextEncoderSpec("text_encoder_3", "tokenizer_3", "T5EncoderModel", "t5", 64),
        ),
        vae_scaling=1.5305,
        vae_shift=0.0609,
        scheduler_shift=3.0,
        structure=(2.0, 24.0),
        defaults=Defaults(steps=2, guidance=7.0, width=64, height=64, max_sequence_length=32),
    )

    # toy-sd3: 12 joint blocks of 2 heads x 56 (5.40M parameters) on 12 space-to-depth channels (256 tokens at
    # 64x64; sin-cos positions up to 128x128). The two CLIPs (16 tokens each, 32 + 32 wide) zero-padded to
    # T5's 64, then T5's 16 tokens; the pooled vector is both CLIP projections.
    toy = ToySpec(
        transformer={"sample_size": 32, "patch_size": 2, "in_channels": 12, "out_channels": 12, "num_layers": 12,
                     "attention_head_dim": 56, "num_attention_heads": 2, "joint_attention_dim": 64,
                     "caption_projection_dim": 112, "pooled_projection_dim": 64, "pos_embed_max_size": 32},
        text_encoders=(
            TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModelWithProjection", "clip", 32, projection=32),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "clip", 32, projection=32),
            TextEncoderSpec("text_encoder_3", "tokenizer_3", "T5EncoderModel", "t5", 64),
        ),
        scheduler_shift=1.0,
        target=0.80,
    )

    def max_side(self, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> int | None:
        positions = transformer.get("pos_embed_max_size")
        return None if positions is None else int(positions) * self.size_multiple(transformer, vae)

    def transformer_kwargs(self, pipe: Any, latents: Any, sigma: Any, embeds: Mapping[str, Any]) -> dict[str, Any]:
        # SD3's pipeline passes the scheduler's timestep itself: sigma x 1000.
        return {"hidden_states": latents, "timestep": sigma * 1000, "encoder_hidden_states": embeds["prompt_embeds"],
                "pooled_projections": embeds["pooled_prompt_embeds"]}

    # Memory (engine/core/memory.py). Measured peak of one block, fp32 on CPU, in (tokens x width) units:
    # 12.0 x image + 1.9 x text tokens; two CLIPs (L and bigG, projected) and T5-XXL.
    memory = MemorySpec(image_activations=12.5, text_activations=2.5, text_encoders=(
        TextEncoderShape("CLIPTextModelWithProjection", 49408, 768, 12, 3072, 12, projection=768),
        TextEncoderShape("CLIPTextModelWithProjection", 49408, 1280, 32, 5120, 20, projection=1280),
        TextEncoderShape("T5EncoderModel", 32128, 4096, 24, 10240, 64, head_dim=64, gated=True),
    ))

    def block_parameters(self, config: Mapping[str, Any]) -> tuple[int, dict[str, list[int]]] | None:
        head_dim = int(config.get("attention_head_dim", 64))
        d = int(config.get("num_attention_heads", 18)) * head_dim
        caption = int(config.get("caption_projection_dim", 1152))
        patch = int(config.get("patch_size", 2))
        cin = int(config.get("in_channels", 16))
        layers = int(config.get("num_layers", 18))
        qk = 0 if config.get("qk_norm") is None else head_dim  # one RMSNorm weight per normalized q or k
        embedders = (cin * patch * patch * d + d  # the patchifying convolution
                     + _linear(256, d) + _linear(d, d)
                     + _linear(int(config.get("pooled_projection_dim", 2048)), d) + _linear(d, d)
                     + _linear(int(config.get("joint_attention_dim", 4096)), caption))
        mlp = _linear(d, 4 * d) + _linear(4 * d, d)
        block = 2 * _linear(d, 6 * d) + 8 * _linear(d, d) + 2 * mlp + 4 * qk
        # The last block is "context pre-only": a continuous norm (2d) for the text, no text output projection
        # and no text MLP.
        last = _linear(d, 6 * d) + _linear(d, 2 * d) + 7 * _linear(d, d) + mlp + 4 * qk
        # A dual-attention block (SD3.5 Medium): a 9d norm instead of 6d, and a second attention.
        extra = _linear(d, 3 * d) + 4 * _linear(d, d) + 2 * qk
        out = patch * patch * int(config.get("out_channels") or cin)
        dual_layers = {int(i) for i in config.get("dual_attention_layers", ()) or ()}
        counts = [(last if i == layers - 1 else block) + (extra if i in dual_layers else 0) for i in range(layers)]
        return embedders + _linear(d, 2 * d) + _linear(d, out), {"double": counts}

    def encode_prompt(self, pipe: Any, prompt: str, cfg: bool, max_sequence_length: int | None,
                      device: Any) -> dict[str, Any]:
        extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, do_classifier_free_guidance=cfg, device=device, **extra)
        out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if cfg:
            out.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return out

    def pseudo_embeddings(self, config: Mapping[str, Any], sequence: int, cfg: bool) -> dict[str, EmbeddingShape]:
        joint, pooled = int(config["joint_attention_dim"]), int(config["pooled_projection_dim"])
        tokens = _CLIP_TOKENS + sequence  # CLIP's 77 tokens, then T5's
        out = {"prompt_embeds": EmbeddingShape((1, tokens, joint)), "pooled_prompt_embeds": EmbeddingShape((1, pooled))}
        if cfg:
            out.update(negative_prompt_embeds=EmbeddingShape((1, tokens, joint)),
                       negative_pooled_prompt_embeds=EmbeddingShape((1, pooled)))
        return out


FAMILY = SD3()
