"""Offline image metrics of an image against a reference (the full model's image for the same prompt and seed).

All weight-free, computed by well-kept libraries (never hand-written): PSNR, SSIM (Gaussian window 11,
σ 1.5) and, where both sides exceed 160 pixels (the five scales of an 11-pixel window need it), MS-SSIM by
torchmetrics; HaarPSI, a perceptual similarity built on Haar wavelets (Reisenhofer et al. 2018; 1 =
identical, any size from 16 pixels up), by piq; plus MAD, the mean absolute difference in 0..255 levels
(numpy). Images are RGB, compared in [0, 1] with data range 1.

piq is installed without its dependencies (`pip install --no-deps piq==0.8.0`, as the README's commands
do): it declares torchvision for its VGG- and Inception-based metrics only, and a torchvision built for
another torch (PyPI's, beside a CPU build of torch) breaks transformers' and diffusers' imports.
`import piq` itself imports those metrics, so `haarpsi_function` loads piq's weight-free modules without
running the package's `__init__` when a plain import fails. FSIM is left out: 9.9 ms a 64x64 pair on a
2-core CPU against HaarPSI's 1.6 ms, for a study that measures every image.

Identical images have an infinite PSNR: it is reported as None with `identical` true, so that JSON stays
JSON and a mean over prompts never hides an infinity.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from PIL import Image

MS_SSIM_MIN_SIDE = 161  # 5 scales, an 11-pixel Gaussian window: (11 - 1) * 2**4 < side
HAARPSI_MIN_SIDE = 16  # piq's HaarPSI: its largest Haar filter (3 scales: 2**4 pixels) must fit the image


@dataclass(frozen=True)
class Comparison:
    identical: bool
    psnr: float | None  # dB; None when identical (infinite)
    mad: float  # mean absolute difference, 0..255
    ssim: float
    ms_ssim: float | None  # None when the image is too small for five scales

    haarpsi: float | None = None  # None when piq is not installed

    def to_json(self) -> dict[str, float | bool | None]:
        return {"identical": self.identical, "psnr": self.psnr, "mad": self.mad, "ssim": self.ssim,
                "ms_ssim": self.ms_ssim, "haarpsi": self.haarpsi}


@functools.cache
def haarpsi_function() -> Callable[..., torch.Tensor] | None:
    """piq's `haarpsi`, or None when piq is not installed. A plain `import piq` first; when that fails (piq's
    `__init__` imports torchvision for its network-based metrics), piq's package is registered bare (its
    folder as the search path, its `__init__` not run) and only `piq.haarpsi` is imported, which needs
    torch and piq's own functional helpers alone. A later `import piq` in the process then gets that bare
    package (its weight-free modules import as usual)."""
    try:
        import piq

        return cast(Callable[..., torch.Tensor], piq.haarpsi)
    except ImportError:
        sys.modules.pop("piq", None)
    spec = importlib.util.find_spec("piq")
    if spec is None or not spec.submodule_search_locations:
        return None
    bare = types.ModuleType("piq")
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__spec__ = spec
    sys.modules["piq"] = bare
    try:
        module = importlib.import_module("piq.haarpsi")
    except ImportError:
        sys.modules.pop("piq", None)
        return None
    return cast(Callable[..., torch.Tensor], module.haarpsi)


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
    haarpsi = haarpsi_function()
    perceptual = float(haarpsi(x, y, data_range=1.0)) if haarpsi is not None and min(image.size) >= HAARPSI_MIN_SIDE \
        else None
    return Comparison(identical, psnr, mad, ssim, ms_ssim, perceptual)
