"""The toy models' autoencoder: exact, parameter-free space-to-depth (2x2 pixels -> 12 channels).

The toy models (engine/toy.py) are trained on 64x64 procedural shapes, where a learned autoencoder would
cost training time, add its own errors to every image and weigh megabytes. Rearranging each 2x2 block of
pixels into channels instead gives a 32x32x12 latent with no weights and no loss: decode(encode(x)) is x,
bit for bit. The pipelines take it like an AutoencoderKL because it answers what they ask of their VAE:

- `config.block_out_channels` (its length sets `vae_scale_factor` = 2 ** (len - 1) = the block size),
  `config.latent_channels`, `config.scaling_factor` and `config.shift_factor` (Flux and SD3 apply them
  around the decode; AuraFlow applies the scaling only, so the shift stays 0), `config.force_upcast`
  (AuraFlow's upcast of a float16 VAE: nothing to upcast);
- `decode(z, return_dict=False)[0]` -> images in [-1, 1], `encode(x).latents` (img2img pipelines read
  `latents` where an AutoencoderKL has `latent_dist`);
- `dtype` and `device` (the pipelines cast latents to `vae.dtype`): a non-persistent one-element buffer
  follows `.to()`; nothing is saved but config.json and an empty weights file (the loader wants one).

A saved pipeline's model_index.json names this class by its module, `["dit_explore.engine.toy_autoencoder",
"SpaceToDepthAutoencoder"]`. diffusers resolves such a name only from modules already imported;
dit-explore's loader (engine/models.py) imports exactly this module and refuses every other class that is
not diffusers' or transformers'. The preview factors of 12-channel latents (families' `preview_factors`)
are the exact 2x2 average: channel c*4 + k of the latent is colour c of sub-pixel k.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, BaseOutput
from safetensors.torch import save_file

# diffusers picks the load method by looking ModelMixin up in the module model_index.json names: keep it here.
__all__ = ["ConfigMixin", "EncoderOutput", "ModelMixin", "SpaceToDepthAutoencoder"]


@dataclass
class EncoderOutput(BaseOutput):
    """What `encode` returns: the latents themselves (nothing is sampled)."""

    latents: torch.Tensor


class SpaceToDepthAutoencoder(ModelMixin, ConfigMixin):
    """Images (B, C, H, W) in [-1, 1] <-> latents (B, C * f * f, H / f, W / f), f = 2 ** (len(block_out_channels) - 1).

    `block_out_channels` lists the channels after each stage, as AutoencoderKL's does (3 -> 12 for f = 2);
    only its length matters to the pipelines. `scaling_factor` and `shift_factor` are the pipelines' (1 and
    0: the latents are the pixels themselves)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, in_channels: int = 3, block_out_channels: tuple[int, ...] = (3, 12), latent_channels: int = 12,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0, force_upcast: bool = False,
                 sample_size: int = 64) -> None:
        super().__init__()
        factor = 2 ** (len(block_out_channels) - 1)
        if latent_channels != in_channels * factor * factor:
            raise ValueError(f"latent_channels must be in_channels x {factor}^2 = {in_channels * factor * factor}, "
                             f"got {latent_channels}")
        self.factor = factor
        # Carries dtype and device through .to() for the pipelines' `vae.dtype`; never saved.
        self.register_buffer("anchor", torch.zeros(1), persistent=False)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """diffusers' save, plus an empty weights file: with no parameters it writes none, and its loader
        wants one (an empty safetensors file, 40 bytes, loads as the empty state dict)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        weights = Path(save_directory) / SAFETENSORS_WEIGHTS_NAME
        if not weights.exists():
            save_file({}, str(weights), metadata={"format": "pt"})

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        latents = torch.nn.functional.pixel_unshuffle(x.to(self.anchor.dtype), self.factor)
        return EncoderOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: object = None) -> DecoderOutput | tuple[torch.Tensor]:
        del generator  # AutoencoderKL's signature; nothing is random here
        sample = torch.nn.functional.pixel_shuffle(z.to(self.anchor.dtype), self.factor)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        latents = torch.nn.functional.pixel_unshuffle(sample, self.factor)
        return self.decode(latents, return_dict=return_dict)
