"""Cheap per-step previews: a fixed linear map from latent channels to RGB, no VAE.

A full VAE decode per step would cost as much as a transformer step at 1024x1024; one small matrix
product per latent pixel costs nothing, and shows the image forming. The factors are each family's
(engine/core/families/): least-squares fits of its latents to RGB. Latents of other widths (the tiny
models) fall back to their first three channels, each stretched to its own range.
"""

from __future__ import annotations

import torch
from PIL import Image

from dit_explore.engine.core.families import Family


@torch.inference_mode()
def preview_image(family: Family, latents: torch.Tensor) -> Image.Image:
    """An RGB image at latent resolution from spatial latents (first batch row)."""
    x = latents[0].float()  # (C, h, w)
    factors = family.preview(x.shape[0])
    if factors is not None:
        weight = torch.tensor(factors[0], device=x.device)
        bias = torch.tensor(factors[1], device=x.device)
        rgb = torch.einsum("chw,cr->rhw", x, weight) + bias[:, None, None]
        rgb = (rgb.clamp(-1, 1) + 1) / 2
    else:
        rgb = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        lo = rgb.amin(dim=(1, 2), keepdim=True)
        hi = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - lo) / (hi - lo).clamp_min(1e-6)
    pixels = (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, "RGB")
