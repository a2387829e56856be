"""How far a plan's image is from its baseline: PSNR and mean absolute difference on 8-bit RGB."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Difference:
    psnr: float  # dB; inf when identical
    mad: float  # mean absolute difference, 0-255 scale

    def describe(self) -> str:
        if math.isinf(self.psnr):
            return "identical to baseline"
        return f"PSNR {self.psnr:.1f} dB · MAD {self.mad:.1f}"


def difference(image: Image.Image, baseline: Image.Image) -> Difference:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(baseline.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {image.size} vs {baseline.size}")
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return Difference(psnr=psnr, mad=float(np.mean(np.abs(a - b))))
