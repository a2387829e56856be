"""piq's perceptual metrics in `compare` (FSIM here; HaarPSI in test_study.py): piq's own values on tensors
built here from the pixels, 1 for identical images (all-black ones too, where piq's HaarPSI is not finite),
and the loader where `import piq` fails the way it does beside a torchvision built for another torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.metrics import compare, compare_many, piq_function


def noisy(base: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(base.astype(int) + rng.normal(0, sigma, base.shape).round().astype(int), 0, 255).astype(np.uint8)


def test_fsim_is_piqs_on_the_images_and_falls_with_noise() -> None:
    import importlib

    import torch

    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(base)
    assert compare(image, image).fsim == 1.0
    values = [compare(Image.fromarray(noisy(base, sigma, rng)), image).fsim for sigma in (5, 20, 60)]
    assert 1 > values[0] > values[1] > values[2] > 0, values
    piq_fsim = importlib.import_module("piq.fsim").fsim
    assert piq_function("fsim") is piq_fsim
    other = noisy(base, 30, rng)
    as_tensor = [torch.tensor(a.transpose(2, 0, 1)[None] / 255.0, dtype=torch.float64) for a in (other, base)]
    assert float(piq_fsim(as_tensor[1], as_tensor[1], data_range=1.0)) == pytest.approx(1.0, abs=1e-9)
    # (metrics.py divides by 255 in float32 before widening: agreement to float32 precision)
    assert compare(Image.fromarray(other), image).fsim == pytest.approx(float(piq_fsim(*as_tensor, data_range=1.0)),
                                                                        rel=1e-6)


def test_identical_images_are_1_and_the_json_stays_json() -> None:
    """piq's HaarPSI of two all-black images divides 0 by 0 (an infinity); identical images are 1 by definition."""
    for colour in ((0, 0, 0), (255, 255, 255), (40, 90, 200)):
        flat = Image.new("RGB", (64, 64), colour)
        found = compare(flat, flat)
        assert found.identical and found.haarpsi == 1.0 and found.fsim == 1.0
        json.dumps(found.to_json(), allow_nan=False)
    grey = compare(Image.new("RGB", (64, 64), (10, 10, 10)), Image.new("RGB", (64, 64), (0, 0, 0)))
    assert grey.haarpsi is not None and 0 < grey.haarpsi < 1 and grey.fsim is not None and 0 < grey.fsim < 1


def test_a_batch_of_pairs_gives_each_pairs_own_comparison() -> None:
    """compare_many computes each metric once over the batch (reduction "none"): every pair's values are
    the ones it gets alone, also beside an identical pair (PSNR None, HaarPSI and FSIM 1), an all-black
    identical pair (whose HaarPSI alone is 0/0), pairs of another size in the same call, and with MS-SSIM
    at 192 pixels; sizes that differ within a pair are refused."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
    black = Image.new("RGB", (64, 64))
    pairs = [(Image.fromarray(noisy(base, s, rng)), Image.fromarray(base)) for s in (4, 30)]
    pairs += [(Image.fromarray(base), Image.fromarray(base)), (black, black)]
    pairs += [(Image.fromarray(noisy(large, 10, rng)), Image.fromarray(large)), (Image.fromarray(noisy(base, 80, rng)),
                                                                               Image.fromarray(base))]
    together = compare_many(pairs)
    alone = [compare(a, b) for a, b in pairs]
    assert len(together) == len(pairs)
    for got, want in zip(together, alone):
        for field, value in want.to_json().items():
            assert (got.to_json()[field] is None) == (value is None), field
            if value is not None:
                assert got.to_json()[field] == pytest.approx(value, rel=1e-9, abs=1e-12), field
    assert together[2].psnr is None and together[3].haarpsi == 1.0 and together[4].ms_ssim is not None
    assert together[1].psnr is not None and together[0].psnr > together[1].psnr > together[5].psnr  # type: ignore[operator]
    with pytest.raises(ValueError, match="different sizes"):
        compare_many([pairs[0], (Image.fromarray(base), Image.fromarray(large))])


def test_the_loader_where_importing_piq_raises_runtime_error(tmp_path: Path) -> None:
    """A torchvision built for another torch raises a RuntimeError on import ("operator torchvision::nms does
    not exist"), and so does `import piq`: both metrics still load, from piq's own modules, and give this
    process's values; a later `import piq` gets the bare package. (There torchmetrics does not import either,
    so `compare` does not run: why piq goes in with --no-deps.)"""
    import torch

    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    code = ("import sys, numpy, torch\n"
            "try:\n    import piq\nexcept RuntimeError as exc:\n    print('plain import fails:', exc)\n"
            "from dit_explore.engine.metrics import piq_function\n"
            "x, y = (torch.tensor(numpy.load(p)) for p in sys.argv[1:3])\n"
            "for name in ('haarpsi', 'fsim'):\n"
            "    f = piq_function(name); print(f.__module__, f.__name__, repr(float(f(x, y, data_range=1.0))))\n"
            "import piq\n"
            "from piq.gmsd import gmsd\n"
            "print(hasattr(piq, 'LPIPS'), hasattr(piq, 'FID'), callable(piq.haarpsi))\n")
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pair = [a.transpose(2, 0, 1)[None] / 255.0 for a in (noisy(base, 25, rng), base)]
    for name, a in zip(("x.npy", "y.npy"), pair):
        np.save(tmp_path / name, a)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[0] == "plain import fails: operator torchvision::nms does not exist", out
    assert lines[3] == "False False False"  # the bare package: piq.haarpsi is the module, no re-exports
    x, y = (torch.tensor(a) for a in pair)
    for line, name in zip(lines[1:3], ("haarpsi", "fsim")):
        module, function_name, value = line.split()
        function = piq_function(name)
        assert function is not None and (module, function_name) == (f"piq.{name}", name)
        assert float(value) == pytest.approx(float(function(x, y, data_range=1.0)), rel=1e-12)
