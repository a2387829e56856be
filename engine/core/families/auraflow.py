"""AuraFlow: MMDiT ("joint") blocks, then single DiT blocks over one joint sequence.

The single blocks take and return one tensor: the text tokens (with the register tokens) first, the
image tokens last. Text: one UMT5. The VAE is SDXL's (4 latent channels, no shift); the pipeline
upcasts a float16 VAE before decoding. Positions form a square grid stored flat.
"""

from __future__ import annotations

import math
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

_REGISTER_TOKENS = 8  # AuraFlowTransformer2DModel prepends 8 learned register tokens to the text


def _linear(inputs: int, outputs: int, bias: bool = True) -> int:
    return inputs * outputs + (outputs if bias else 0)


class AuraFlow(Family):
    name = "auraflow"
    pipeline_class = "AuraFlowPipeline"
    transformer_class = "AuraFlowTransformer2DModel"
    stacks = (
        StackSpec("double", "joint_transformer_blocks", "num_mmdit_layers", 4, "AuraFlowJointTransformerBlock",
                  BlockIO(inputs=("hidden_states", "encoder_hidden_states"),
                          outputs=("encoder_hidden_states", "hidden_states"))),
        StackSpec("single", "single_transformer_blocks", "num_single_dit_layers", 32, "AuraFlowSingleTransformerBlock",
                  BlockIO(inputs=("hidden_states",), outputs=("hidden_states",), text_first=True)),
    )
    text_slots = ("text_encoder", "tokenizer")
    defaults = Defaults(steps=50, guidance=3.5, max_sequence_length=256)
    upcasts_vae = True
    # SDXL's VAE: the widely used fit of its 4 latent channels to RGB.
    preview_factors = {4: (
        [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
        [0.1084, -0.0175, -0.0011],
    ), 12: SPACE_TO_DEPTH_PREVIEW}
    # caption_projection_dim equals the width (2 heads x 16): projected captions enter the joint blocks.
    tiny = TinySpec(
        transformer={"sample_size": 16, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_mmdit_layers": 2,
                     "num_single_dit_layers": 6, "attention_head_dim": 16, "num_attention_heads": 2,
                     "joint_attention_dim": 32, "caption_projection_dim": 32, "pos_embed_max_size": 256},
        text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "UMT5EncoderModel", "t5", 32),),
        vae_scaling=0.13025,
        vae_shift=None,
        scheduler_shift=1.73,
        structure=(4.0, 48.0),
        defaults=Defaults(steps=2, guidance=3.5, width=64, height=64, max_sequence_length=32),
    )

    # toy-auraflow: 2 joint + 12 single blocks of 2 heads x 64 (5.90M parameters) on 12 space-to-depth channels;
    # learned positions for exactly the 16x16 patches of 64x64 (pos_embed_max_size 256: nothing larger was
    # ever trained). One UMT5, 64 wide, 16 tokens.
    toy = ToySpec(
        transformer={"sample_size": 32, "patch_size": 2, "in_channels": 12, "out_channels": 12, "num_mmdit_layers": 2,
                     "num_single_dit_layers": 12, "attention_head_dim": 64, "num_attention_heads": 2,
                     "joint_attention_dim": 64, "caption_projection_dim": 128, "pos_embed_max_size": 256},
        text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "UMT5EncoderModel", "t5", 64),),
        scheduler_shift=1.0,
        target=0.80,
    )

    def transformer_kwargs(self, pipe: Any, latents: Any, sigma: Any, embeds: Mapping[str, Any]) -> dict[str, Any]:
        # AuraFlow's pipeline passes t / 1000 = sigma, and the embeddings already multiplied by their mask.
        return {"hidden_states": latents, "encoder_hidden_states": embeds["prompt_embeds"], "timestep": sigma}

    def max_side(self, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> int | None:
        positions = transformer.get("pos_embed_max_size")
        if positions is None:
            return None
        return math.isqrt(int(positions)) * self.size_multiple(transformer, vae)  # a square grid, stored flat

    # Memory (engine/core/memory.py). Measured peaks of one block, fp32 on CPU, in (tokens x width) units:
    # single blocks 11.06 x (text + image tokens), joint blocks 11.0 x image + 2.0 x text; one UMT5 (Pile-T5-XL).
    memory = MemorySpec(image_activations=11.5, text_activations=11.5, register_tokens=_REGISTER_TOKENS, text_encoders=(
        TextEncoderShape("UMT5EncoderModel", 32128, 2048, 24, 5120, 32, head_dim=64, gated=True),
    ))

    def block_parameters(self, config: Mapping[str, Any]) -> tuple[int, dict[str, list[int]]] | None:
        d = int(config.get("num_attention_heads", 18)) * int(config.get("attention_head_dim", 128))
        patch = int(config.get("patch_size", 2))
        cin = int(config.get("in_channels", 4))
        hidden = -(-int(2 * 4 * d / 3) // 256) * 256  # AuraFlowFeedForward: 2/3 of 4d, up to a multiple of 256
        mlp = 3 * d * hidden  # SwiGLU: two projections in, one out, no biases
        embedders = (patch * patch * cin * d + d + int(config.get("pos_embed_max_size", 1024)) * d  # patches, positions
                     + int(config.get("joint_attention_dim", 4096)) * int(config.get("caption_projection_dim", 3072))
                     + _linear(256, d) + _linear(d, d) + _REGISTER_TOKENS * d)
        joint = 2 * 6 * d * d + 8 * d * d + 2 * mlp  # two AdaLayerNormZero (no bias), eight projections, two MLPs
        single = 6 * d * d + 4 * d * d + mlp
        out = patch * patch * int(config.get("out_channels") or cin)
        return embedders + 2 * d * d + d * out, {"double": [joint] * int(config.get("num_mmdit_layers", 4)),
                                                  "single": [single] * int(config.get("num_single_dit_layers", 32))}

    def encode_prompt(self, pipe: Any, prompt: str, cfg: bool, max_sequence_length: int | None,
                      device: Any) -> dict[str, Any]:
        extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            prompt=prompt, do_classifier_free_guidance=cfg, device=device, **extra)
        out = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        if cfg:
            out.update(negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)
        return out

    def pseudo_embeddings(self, config: Mapping[str, Any], sequence: int, cfg: bool) -> dict[str, EmbeddingShape]:
        # The pipeline's mask has the embeddings' shape (it multiplies them).
        shape = (1, sequence, int(config["joint_attention_dim"]))
        out = {"prompt_embeds": EmbeddingShape(shape), "prompt_attention_mask": EmbeddingShape(shape, mask=True)}
        if cfg:
            out.update(negative_prompt_embeds=EmbeddingShape(shape),
                       negative_prompt_attention_mask=EmbeddingShape(shape, mask=True))
        return out

    def latents_for_vae(self, pipe: Any, latents: Any, width: int, height: int) -> Any:
        vae = pipe.vae
        return latents.to(vae.dtype) / vae.config.scaling_factor


FAMILY = AuraFlow()
