"""Cheap per-step previews: a fixed linear map from latent channels to RGB, no VAE.

A full VAE decode per step would cost as much as a transformer step at 1024x1024; one small matrix
product per latent pixel costs nothing, and shows the image forming. The factors are the widely used
least-squares fits of each family's latents to RGB (Flux and SD3: 16 channels; AuraFlow uses the SDXL
VAE: 4 channels). Latents of other widths (the tiny models) fall back to their first three channels,
each stretched to its own range.
"""

from __future__ import annotations

import torch
from PIL import Image

# (channels x RGB) factors and RGB bias; the output is in [-1, 1].
_FLUX = (
    [
        [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ],
    [-0.0329, -0.0718, -0.0851],
)
_SD3 = (
    [
        [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189],
    ],
    [0.2394, 0.2135, 0.1925],
)
_SDXL = (
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
    [0.1084, -0.0175, -0.0011],
)
FACTORS = {("flux", 16): _FLUX, ("sd3", 16): _SD3, ("auraflow", 4): _SDXL}


def spatial_latents(pipe: object, family: str, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Latents as (batch, channels, h, w); Flux keeps them packed as 2x2 patches per token."""
    if family == "flux":
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # type: ignore[attr-defined]
    return latents


@torch.inference_mode()
def preview_image(family: str, latents: torch.Tensor) -> Image.Image:
    """An RGB image at latent resolution from spatial latents (first batch row)."""
    x = latents[0].float()  # (C, h, w)
    factors = FACTORS.get((family, x.shape[0]))
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
