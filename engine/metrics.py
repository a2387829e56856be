"""Offline image metrics of an image against a reference (the full model's image for the same prompt and seed).

All weight-free, computed by torchmetrics (never hand-written): PSNR, SSIM (Gaussian window 11, σ 1.5) and,
where both sides exceed 160 pixels (the five scales of an 11-pixel window need it), MS-SSIM; plus MAD, the
mean absolute difference in 0..255 levels (numpy). Images are RGB, compared in [0, 1] with data range 1.

Identical images have an infinite PSNR: it is reported as None with `identical` true, so that JSON stays
JSON and a mean over prompts never hides an infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MS_SSIM_MIN_SIDE = 161  # 5 scales, an 11-pixel Gaussian window: (11 - 1) * 2**4 < side


@dataclass(frozen=True)
class Comparison:
    identical: bool
    psnr: float | None  # dB; None when identical (infinite)
    mad: float  # mean absolute difference, 0..255
    ssim: float
    ms_ssim: float | None  # None when the image is too small for five scales

    def to_json(self) -> dict[str, float | bool | None]:
        return {"identical": self.identical, "psnr": self.psnr, "mad": self.mad, "ssim": self.ssim,
                "ms_ssim": self.ms_ssim}


def _tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(torch.float64)


def compare(image: Image.Image, reference: Image.Image) -> Comparison:
    """`image` against `reference` (the same size: a ValueError otherwise)."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    if image.size != reference.size:
        raise ValueError(f"images of different sizes: {image.size} and {reference.size}")
    a, b = np.asarray(image.convert("RGB")), np.asarray(reference.convert("RGB"))
    identical = bool(np.array_equal(a, b))
    mad = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
    x, y = _tensor(image), _tensor(reference)
    value = structural_similarity_index_measure(x, y, data_range=1.0)
    assert isinstance(value, torch.Tensor)  # (not the tuple it returns with return_full_image)
    ssim = float(value)
    psnr = None if identical else float(peak_signal_noise_ratio(x, y, data_range=1.0))
    ms_ssim = None
    if min(image.size) >= MS_SSIM_MIN_SIDE:
        ms_ssim = float(multiscale_structural_similarity_index_measure(x, y, data_range=1.0))
    return Comparison(identical, psnr, mad, ssim, ms_ssim)
