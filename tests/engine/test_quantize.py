"""--quantize int8: torchao's int8 weight-only quantization of the transformer blocks. On toy-flux the
quantized model still draws what the captions say (the scorer reads the same attributes as from the
float32 model) and its images stay within 30 dB PSNR of float32; plans still swap the quantized blocks;
runs say they were quantized; without torchao, one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.plan import Plan
from dit_explore.engine.core.resolve import ModelError, resolve
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.engine.core.shapes import ATTRIBUTES, CAPTIONS, read_back
from dit_explore.engine.eval import for_scoring
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import load
from dit_explore.tui.cli import main

pytest.importorskip("torchao")
LAYOUT = MODELS["toy-flux"].layout


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


@pytest.mark.parametrize(("kind", "stored"), [("int8", torch.int8), ("fp8-weights", torch.float8_e4m3fn)])
def test_quantized_toy_flux_draws_what_the_captions_say(tiny_generator: Any, kind: str, stored: torch.dtype) -> None:
    source = resolve("toy-flux")
    quantized = load(source, torch.device("cpu"), torch.float32, quantize=kind)
    assert quantized.precision == f"float32+{kind}" and quantized.quantization == kind
    for stack in LAYOUT.stacks:  # every linear layer of every block holds 8-bit weights
        for block in getattr(quantized.transformer, stack.attr):
            weights = [m.weight for m in block.modules() if isinstance(m, torch.nn.Linear)]
            assert weights and all(w.qdata.dtype == stored for w in weights)
    assert isinstance(quantized.transformer.proj_out.weight, torch.nn.Parameter)  # outside the blocks: float32
    full, q = tiny_generator("toy-flux"), Generator(quantized)
    settings = resolve_settings(source.defaults)
    captions = range(0, len(CAPTIONS), 54)  # 6 captions across sizes, colours, shapes and positions
    quantized_images = {}
    for i in captions:
        if i not in _FLOAT32_IMAGES:  # (drawn once for both kinds)
            _FLOAT32_IMAGES[i] = full.generate(CAPTIONS[i], settings, Plan()).image
        image, quantized_image = _FLOAT32_IMAGES[i], q.generate(CAPTIONS[i], settings, Plan()).image
        quantized_images[i] = quantized_image
        assert psnr(np.asarray(image), np.asarray(quantized_image)) >= 30, CAPTIONS[i]
        want = ATTRIBUTES[i]
        read = read_back(for_scoring(quantized_image)).matches(want)
        assert read == read_back(for_scoring(image)).matches(want), CAPTIONS[i]
    skipped = Plan(orders=(("single", (0, 1, 2, 3, 8, 9, 10, 11)),))
    c = np.asarray(q.generate(CAPTIONS[0], settings, skipped).image)
    assert psnr(c, np.asarray(quantized_images[0])) < 30  # the plan ran


_FLOAT32_IMAGES: dict[int, Any] = {}


def test_a_quantized_run_says_so(tmp_path: Path) -> None:
    assert main(["run", "toy-flux", "--quantize", "int8", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["quantization"] == "int8" and record["dtype"] == "float32"
    from PIL import Image

    from dit_explore.engine.core.runs import PNG_QUANTIZATION_KEY

    assert Image.open(tmp_path / "run" / "000.png").text[PNG_QUANTIZATION_KEY] == "int8"


def test_without_torchao_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ModelError) as exc:
        load(resolve("tiny-flux"), torch.device("cpu"), torch.float32, quantize="int8")
    assert str(exc.value) == "--quantize int8 needs torchao: pip install --no-deps torchao==0.18.0 (the [quantize] extra)"


def test_an_unknown_quantization_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "toy-flux", "--quantize", "fp4", "--out", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --quantize: invalid choice: 'fp4' (choose from 'int8', 'fp8', 'fp8-weights')" \
        in err[0]


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9),
                    reason="this GPU has FP8 matmuls")
def test_fp8_without_fp8_matmuls_is_refused_before_loading(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "toy-flux", "--quantize", "fp8", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dit-explore run: error: --quantize fp8 needs a GPU with FP8 matmuls (compute capability 8.9+: Ada, Hopper) "
                   "and this is cpu; --quantize fp8-weights keeps the weights in FP8 on any device"]
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="needs a GPU with FP8 matmuls")
def test_fp8_toy_flux_on_the_gpu_stays_close_to_bf16() -> None:
    """FP8 weights and activations: toy-flux in bfloat16 reads back the same attributes and stays >= 30 dB."""
    source = resolve("toy-flux")
    device = torch.device("cuda")
    full = Generator(load(source, device, torch.bfloat16))
    q = Generator(load(source, device, torch.bfloat16, quantize="fp8"))
    settings = resolve_settings(source.defaults)
    for i in range(0, len(CAPTIONS), 54):
        image, quantized_image = full.generate(CAPTIONS[i], settings, Plan()).image, q.generate(
            CAPTIONS[i], settings, Plan()).image
        assert psnr(np.asarray(image), np.asarray(quantized_image)) >= 30, CAPTIONS[i]
        want = ATTRIBUTES[i]
        assert read_back(for_scoring(quantized_image)).matches(want) == read_back(for_scoring(image)).matches(want)
