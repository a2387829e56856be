"""Offline image metrics of an image against a reference (the full model's image for the same prompt and seed).

All weight-free, computed by well-kept libraries (never hand-written): PSNR, SSIM (Gaussian window 11,
σ 1.5) and, where both sides exceed 160 pixels (the five scales of an 11-pixel window need it), MS-SSIM by
torchmetrics; by piq, two perceptual similarities (1 = identical, lower = further apart): HaarPSI, on Haar
wavelets (Reisenhofer et al. 2018; any size from 16 pixels up) and FSIM, on phase congruency and gradients
(Zhang et al. 2011; chromatic, FSIMc; any size from 2 pixels up); plus MAD, the mean absolute difference in
0..255 levels (numpy). Images are RGB, compared in [0, 1] with data range 1, piq's default settings.

Cost on a 2-core CPU, per 64x64 pair (the toys' size): HaarPSI 1.5 ms, FSIM 8.5 ms, against about 37 ms
for the rest of the comparison; at 256 pixels 11 and 112 ms, at 1024 pixels 1.3 and 1.8 s (the whole
comparison of a 1024x1024 pair: 20 s on that CPU, in float64). `compare(..., device=...)` computes on
another device: sweeps and studies compare on the generator's device, so a GPU's images are measured on
the GPU (float64 there too; the values agree with the CPU's to about 1e-9).

piq is installed without its dependencies (`pip install --no-deps piq==0.8.0`, as the README's commands
do): it declares torchvision for its VGG- and Inception-based metrics only, and a torchvision built for
another torch (PyPI's 0.28.0 beside the CPU build of torch 2.13.0) fails at import with a RuntimeError
("operator torchvision::nms does not exist") that breaks torchmetrics' import and transformers' and
diffusers' model classes. `import piq` itself imports those metrics, so `piq_function` loads piq's
weight-free modules without running the package's `__init__` when a plain import fails.

Identical images have an infinite PSNR: it is reported as None with `identical` true, so that JSON stays
JSON and a mean over prompts never hides an infinity. Their HaarPSI and FSIM are 1, by definition, not
computed: piq's HaarPSI of two all-black images divides 0 by 0 (its weights are the Haar coefficients, all
0) and returns infinity. Any other non-finite value of piq's is reported as None.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
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
FSIM_MIN_SIDE = 2  # piq's FSIM of an image 1 pixel wide or high is NaN


@dataclass(frozen=True)
class Comparison:
    identical: bool
    psnr: float | None  # dB; None when identical (infinite)
    mad: float  # mean absolute difference, 0..255
    ssim: float
    ms_ssim: float | None  # None when the image is too small for five scales

    haarpsi: float | None = None  # None when piq is not installed or the image is too small
    fsim: float | None = None  # the same

    def to_json(self) -> dict[str, float | bool | None]:
        return {"identical": self.identical, "psnr": self.psnr, "mad": self.mad, "ssim": self.ssim,
                "ms_ssim": self.ms_ssim, "haarpsi": self.haarpsi, "fsim": self.fsim}


@functools.cache
def piq_function(name: str) -> Callable[..., torch.Tensor] | None:
    """piq's metric `name` ("haarpsi", "fsim": the function of that name in piq's module of that name), or
    None when piq is not installed.

    A plain import first (`piq.<name>`, which runs piq's `__init__`). That fails where torchvision does not
    import (piq's `__init__` imports its network-based metrics, which import torchvision): an ImportError
    where it is absent, a RuntimeError where it was built for another torch. Then piq's package is
    registered bare in `sys.modules` (a module whose `__path__` is piq's installed folder; its `__init__`
    not run) and only `piq.<name>` is imported, which needs torch and piq's own `utils` and `functional`
    alone. That bare package stays: a later `import piq` in the same process gets it instead of failing
    again, `from piq.haarpsi import haarpsi` (any weight-free module) works as usual, but the names the
    real `__init__` re-exports are not there (`piq.haarpsi` is then the module, `piq.LPIPS` missing)."""
    try:
        module = importlib.import_module(f"piq.{name}")
    except (ImportError, RuntimeError):
        if "piq" in sys.modules:  # a bare package registered earlier, and the module itself fails
            return None
        spec = importlib.util.find_spec("piq")
        if spec is None or not spec.submodule_search_locations:
            return None
        bare = types.ModuleType("piq")
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__spec__ = spec
        sys.modules["piq"] = bare
        try:
            module = importlib.import_module(f"piq.{name}")
        except (ImportError, RuntimeError):
            return None
    return cast(Callable[..., torch.Tensor], getattr(module, name))


def _tensor(images: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float64 in [0, 1] on `device` (through float32, as always)."""
    array = images.astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(device=device, dtype=torch.float64)


def compare(image: Image.Image, reference: Image.Image, device: torch.device | str | None = None) -> Comparison:
    """`image` against `reference` (the same size: a ValueError otherwise), computed on `device` (default
    the CPU)."""
    return compare_many([(image, reference)], device)[0]


def compare_many(pairs: list[tuple[Image.Image, Image.Image]], device: torch.device | str | None = None,
                 ) -> list[Comparison]:
    """Each (image, reference) pair compared, as `compare` does, with each metric computed once over the
    whole batch of pairs (per-image values, `reduction="none"`): a sweep measures a batch of small images
    in a few dozen kernel launches instead of a few hundred per image. Pairs of different sizes are grouped
    by size; every pair's sides must match (a ValueError otherwise)."""
    for image, reference in pairs:
        if image.size != reference.size:
            raise ValueError(f"images of different sizes: {image.size} and {reference.size}")
    out: list[Comparison | None] = [None] * len(pairs)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (image, _) in enumerate(pairs):
        by_size.setdefault(image.size, []).append(i)
    for size, where in by_size.items():
        for i, comparison in zip(where, _compare_same_size([pairs[i] for i in where], size, device)):
            out[i] = comparison
    return [c for c in out if c is not None]


def _compare_same_size(pairs: list[tuple[Image.Image, Image.Image]], size: tuple[int, int],
                       device: torch.device | str | None) -> list[Comparison]:
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    a = np.stack([np.asarray(image.convert("RGB")) for image, _ in pairs])
    b = np.stack([np.asarray(reference.convert("RGB")) for _, reference in pairs])
    identical = [bool(np.array_equal(x, y)) for x, y in zip(a, b)]
    mad = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))
    x, y = _tensor(a, device), _tensor(b, device)

    def values(tensor: torch.Tensor | tuple[torch.Tensor, ...]) -> list[float]:
        assert isinstance(tensor, torch.Tensor)  # (not the tuple SSIM returns with return_full_image)
        return [float(v) for v in tensor.reshape(-1).cpu()]

    ssim = values(structural_similarity_index_measure(x, y, data_range=1.0, reduction="none"))
    psnr = values(peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)))
    ms_ssim: list[float | None] = [None] * len(pairs)
    if min(size) >= MS_SSIM_MIN_SIDE:
        ms_ssim = list(values(multiscale_structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")))

    def perceptual(name: str, min_side: int) -> list[float | None]:
        function = piq_function(name)
        if function is None or min(size) < min_side:
            return [None] * len(pairs)
        if all(identical):
            return [1.0] * len(pairs)
        found = values(function(x, y, data_range=1.0, reduction="none"))
        return [1.0 if same else (v if math.isfinite(v) else None) for same, v in zip(identical, found)]

    haarpsi, fsim = perceptual("haarpsi", HAARPSI_MIN_SIDE), perceptual("fsim", FSIM_MIN_SIDE)
    return [Comparison(identical[i], None if identical[i] else psnr[i], float(mad[i]), ssim[i], ms_ssim[i],
                       haarpsi=haarpsi[i], fsim=fsim[i]) for i in range(len(pairs))]
