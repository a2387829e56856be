"""`dit-explore study`: the saved strategies on the toy model, metrics checked against the images it wrote
(computed here with numpy and the scorer), plan files on a random tiny model, and every bad-input path."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.shapes import ATTRIBUTES, CAPTIONS, read_back
from dit_explore.engine.metrics import compare
from dit_explore.tui.cli import main

CAPTION = "a large red circle at the top left"


def study_cli(*args: str) -> int:
    try:
        return main(["study", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float((((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).mean())
    return 10 * math.log10(1.0 / mse)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_compare_against_hand_computed_values() -> None:
    black = Image.new("RGB", (64, 64), (0, 0, 0))
    grey = Image.new("RGB", (64, 64), (10, 10, 10))
    found = compare(grey, black)
    assert found.mad == 10.0 and not found.identical
    assert found.psnr == pytest.approx(20 * math.log10(255 / 10), rel=1e-6)
    same = compare(black, black)
    assert same.identical and same.psnr is None and same.mad == 0.0 and same.ssim == pytest.approx(1.0)
    assert same.ms_ssim is None  # 64 px: too small for five scales
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8))
    noisy = Image.fromarray(np.clip(np.asarray(big).astype(int) + rng.integers(-40, 41, (192, 192, 3)), 0, 255)
                            .astype(np.uint8))
    both = compare(noisy, big)
    assert both.ms_ssim is not None and 0 < both.ms_ssim < 1 and 0 < both.ssim < 1
    with pytest.raises(ValueError, match="different sizes"):
        compare(big, black)


def test_haarpsi_is_piqs_on_the_images_and_falls_with_noise() -> None:
    """HaarPSI (piq): 1 for an image with itself, lower as more noise is added, and exactly piq's value on a
    tensor built here from the pixels (RGB, channels first, 0..1); none below piq's 16-pixel minimum."""
    import importlib

    import torch

    from dit_explore.engine.metrics import piq_function

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(base)
    assert compare(image, image).haarpsi == pytest.approx(1.0, abs=1e-6)
    values = []
    for sigma in (5, 20, 60):
        noisy = np.clip(base.astype(int) + rng.normal(0, sigma, base.shape).round().astype(int), 0, 255).astype(np.uint8)
        values.append(compare(Image.fromarray(noisy), image).haarpsi)
    assert values[0] > values[1] > values[2] > 0, values
    piq_haarpsi = importlib.import_module("piq.haarpsi").haarpsi
    assert piq_function("haarpsi") is piq_haarpsi
    as_tensor = [torch.tensor(a.transpose(2, 0, 1)[None] / 255.0, dtype=torch.float64) for a in (noisy, base)]
    # (metrics.py divides by 255 in float32 before widening: agreement to float32 precision)
    assert values[2] == pytest.approx(float(piq_haarpsi(*as_tensor, data_range=1.0)), rel=1e-6)
    small = Image.fromarray(base[:15, :15])
    assert compare(small, small).haarpsi is None


def test_haarpsi_loads_where_importing_piq_fails() -> None:
    """piq's __init__ imports torchvision (for its network metrics); with torchvision unimportable, HaarPSI
    still loads, from piq's own module."""
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "try:\n    import piq\nexcept ImportError:\n    print('plain import fails')\n"
            "from dit_explore.engine.metrics import piq_function\n"
            "f = piq_function('haarpsi'); print(f.__module__, f.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == ["plain import fails", "piq.haarpsi haarpsi"], out


def test_study_of_toy_flux_writes_what_its_images_say(tmp_path: Path) -> None:
    import torch

    from dit_explore.engine.metrics import piq_function

    out = tmp_path / "study"
    assert study_cli("toy-flux", "--prompt", CAPTION, "--steps", "4", "--device", "cpu", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "images", "results.csv", "results.json",
                                                     "summary.md"]
    record = json.loads((out / "results.json").read_text())
    rows: list[dict[str, Any]] = record["rows"]
    labels = [r["plan"] for r in rows]
    assert labels[0] == "full model" and len(rows) == 7  # the full model and the six saved strategies
    assert [r["plan_file"] for r in rows[1:]] == [f"saved_plans/toy-flux/{s}.plan.toml" for s in (
        "1-skip-first-block", "2-skip-middle", "3-middle-repeat", "4-reverse", "5-parallel", "6-looped-parallel")]
    # Block executions per image at 4 steps, by hand: 6 double + 12 single blocks per step.
    assert [r["block_executions"] for r in rows] == [72, 68, 48, 72, 72, 72, 120]
    full = pixels(out / rows[0]["image"])
    assert rows[0]["identical"] and rows[0]["mad"] == 0.0 and rows[0]["psnr"] is None
    index = CAPTIONS.index(CAPTION)
    for row in rows:
        image = pixels(out / row["image"])
        if row["plan"] != "full model":
            assert not row["identical"]
            assert row["psnr"] == pytest.approx(psnr(image, full), rel=1e-6)
            assert row["mad"] == pytest.approx(float(np.abs(image.astype(int) - full.astype(int)).mean()), rel=1e-9)
            assert -1 < row["ssim"] < 1
            for name in ("haarpsi", "fsim"):  # piq's value on the written pixels, widened to float64 here
                function = piq_function(name)
                assert function is not None
                value = float(function(*(torch.tensor(a.transpose(2, 0, 1)[None] / 255.0) for a in (image, full)),
                                       data_range=1.0))
                assert row[name] == pytest.approx(value, rel=1e-6) and 0 < row[name] < 1
        hits = read_back(image).matches(ATTRIBUTES[index])
        assert row["all_correct"] == all(hits.values()) and row["shape"] == hits["shape"]
    # The CSV says what the JSON says.
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["plan"] for t in table] == labels
    for t, r in zip(table, rows):
        assert (t["psnr"] == "" and r["psnr"] is None) or float(t["psnr"]) == pytest.approx(r["psnr"])
        assert [float(t[m]) for m in ("haarpsi", "fsim")] == pytest.approx([r["haarpsi"], r["fsim"]])
        assert int(t["block_executions"]) == r["block_executions"]
    summary = (out / "summary.md").read_text()
    skip = next(s for s in record["summary"] if s["plan"] == "single: skip middle 3-8")
    assert skip["predicted_speedup"] == pytest.approx(1.5) and skip["images"] == 1
    assert "| single: skip middle 3-8 | 48 | 1.50× |" in summary
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 7 * 128  # seven rows of 64-px images drawn at twice their size


def test_study_of_plan_files_on_a_random_tiny_model(tmp_path: Path) -> None:
    plans_dir = tmp_path / "plans"
    plans_dir.mkdir()
    (plans_dir / "a.plan.toml").write_text('version = 1\nname = "skip 2-5"\n[order]\nsingle = "0-1, 6-7"\n')
    # A version-2 plan: step 1 runs the full model, the others reuse single 1-7 after step 0.
    (plans_dir / "b.plan.toml").write_text('version = 2\n[order]\nsingle = "0, 1-7@reuse"\n'
                                           '[[steps]]\nsteps = "1"\n[steps.order]\n')
    out = tmp_path / "study"
    code = study_cli("tiny-flux", "--plans", str(plans_dir / "a.plan.toml"), str(plans_dir / "b.plan.toml"),
                     "--prompt", "one", "--prompt", "two", "--seeds", "3", "4", "--steps", "2", "--device", "cpu",
                     "--out", str(out))
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    rows = record["rows"]
    written = plans.loads(record["plans"][2]["text"])  # the whole plan that ran, its step table included
    from_file = plans.load(plans_dir / "b.plan.toml")
    assert (written.orders, written.step_orders) == (from_file.orders, from_file.step_orders)
    assert [(r["plan"], r["prompt"], r["seed"]) for r in rows] == [
        (plan, prompt, seed) for prompt in ("one", "two") for seed in (3, 4) for plan in ("full model", "skip 2-5", "b")]
    assert all(r["all_correct"] is None for r in rows if "all_correct" in r) and "all_correct" not in rows[0]
    images = {r["image"] for r in rows}
    assert len(images) == 12 and all((out / i).is_file() for i in images)
    # Seed 3 and seed 4 give different full-model images: the seeds reach the generator.
    fulls = [pixels(out / r["image"]) for r in rows if r["plan"] == "full model"]
    assert not np.array_equal(fulls[0], fulls[1])


@pytest.mark.parametrize(("args", "says"), [
    (["tiny-flux"], "no saved plans for tiny-flux"),
    (["toy-flux", "--seeds", "1", "1"], "named twice"),
    (["toy-flux", "--seeds", "-1"], "between 0 and"),
    (["toy-flux", "--plans", "missing.plan.toml"], "missing.plan.toml"),
    (["no-such-model"], "no-such-model"),
    (["toy-flux", "--steps", "0"], "steps"),
])
def test_bad_input_is_one_line_before_loading(args: list[str], says: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert study_cli(*args, "--device", "cpu", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_empty_prompts_file_and_an_out_that_is_a_file_are_refused(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert study_cli("toy-flux", "--prompts", str(empty), "--out", str(tmp_path / "s")) == 2
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert study_cli("toy-flux", "--out", str(taken)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no prompts" in err[0] and "not a directory" in err[1]
    assert taken.read_text() == "mine" and not (tmp_path / "s").exists()
