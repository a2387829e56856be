"""diffusers' FirstBlockCache and MagCache traced and replayed (engine/cache_trace.py): the trace plans by
hand, the trace against an independent probe, MagCache's calibration against ratios computed by hand,
the replay against the dynamic run (same image, same cost), the caches gone afterwards, and bad input in
one line."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.cache_trace import first_block_cache, mag_cache, trace_plan
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.plan import Cached, Plan, StepTable
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.tui.cli import main

FLUX = MODELS["toy-flux"].layout
PROMPT = "a large red circle at the top left"


def run_cli(*args: str) -> int:
    try:
        return main(["run", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_the_trace_plan_by_hand() -> None:
    plan = trace_plan(FLUX, [0, 3], 5, name="t", note="n")
    assert dict(plan.orders) == {"double": (0, Cached(1, 5, "reuse")), "single": (Cached(0, 11, "reuse"),)}
    assert plan.step_orders == (StepTable((0, 3)),)
    plans.validate(plan, FLUX)
    plans.validate_steps(plan, 5)
    assert trace_plan(FLUX, [0, 1, 2], 3, name="t", note="n") == Plan(name="t", note="n")  # nothing skipped


def test_the_trace_is_the_steps_the_tail_ran(tiny_generator: Callable[[str], Any]) -> None:
    """An independent probe on the last single block's first submodule sees the same steps as the trace,
    and after the context the model is the plain full model again."""
    generator = tiny_generator("toy-flux")
    transformer = generator.loaded.transformer
    settings = resolve_settings(MODELS["toy-flux"].defaults)
    full = np.asarray(generator.generate(PROMPT, settings, Plan()).image)
    seen: list[int] = []
    step = [0]

    def on_step(done: int, total: int, latents: Any) -> None:
        step[0] = done
        trace.on_step(done, total, latents)

    last = next(transformer.single_transformer_blocks[11].children())
    probe = last.register_forward_pre_hook(lambda module, args: seen.append(step[0]))
    try:
        with first_block_cache(transformer, FLUX, 0.2) as trace:
            cached = np.asarray(generator.generate(PROMPT, settings, Plan(), on_step=on_step).image)
    finally:
        probe.remove()
    assert trace.computed == sorted(set(seen)) and trace.computed[0] == 0
    assert 0 < len(trace.computed) < settings.steps  # the cache skipped some steps and ran others
    assert np.abs(cached.astype(int) - full.astype(int)).mean() > 0.1
    again = np.asarray(generator.generate(PROMPT, settings, Plan()).image)
    assert np.array_equal(again, full)  # the cache and the probe are gone


@pytest.mark.parametrize(("cache", "head"), [("first-block:0.2", True), ("mag:0.1", False)])
def test_a_traced_run_replays_to_the_same_image_at_the_same_cost(cache: str, head: bool, tmp_path: Path) -> None:
    """FirstBlockCache's trace runs the first block on skipped steps, MagCache's none (after its
    calibration run, whose ratios run.json keeps); either replays to the dynamic run's image (40 dB at
    least; byte for byte so far) at the block executions it ran."""
    trace = tmp_path / "trace.plan.toml"
    assert run_cli("toy-flux", "--cache", cache, "--trace-plan", str(trace), "--device", "cpu",
                   "--out", str(tmp_path / "dynamic")) == 0
    dynamic = json.loads((tmp_path / "dynamic" / "run.json").read_text())
    record = dynamic["cache"]
    kind, threshold = cache.split(":")
    assert record["kind"] == kind and record["threshold"] == float(threshold)
    assert record["skipped_fraction"] >= 0.25  # the bar: a quarter of the block executions skipped
    plan = plans.load(trace)
    assert plan.step_orders[0].steps == tuple(record["computed_steps"])
    assert dict(plan.orders)["double"] == ((0, Cached(1, 5, "reuse")) if head else (Cached(0, 5, "reuse"),))
    if not head:
        assert len(record["calibration_ratios"]) == 20 and record["computed_steps"][:4] == [0, 1, 2, 3]  # a fifth
    assert run_cli("toy-flux", "--plan", str(trace), "--device", "cpu", "--out", str(tmp_path / "replay")) == 0
    replay = json.loads((tmp_path / "replay" / "run.json").read_text())
    a = np.asarray(Image.open(tmp_path / "dynamic" / "000.png"), dtype=float)
    b = np.asarray(Image.open(tmp_path / "replay" / "000.png"), dtype=float)
    mse = ((a - b) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255**2 / mse) >= 40
    # Same cost: what the dynamic run executed (FirstBlockCache: the first block on every step too).
    computed, steps = len(record["computed_steps"]), 20
    skipped_steps_cost = (steps - computed) * (1 if head else 0)
    assert dynamic["block_runs"]["total"] == replay["block_runs"]["total"] == computed * 18 + skipped_steps_cost


@pytest.mark.parametrize(("args", "says"), [
    (["--cache", "first-block:0"], "the threshold must be above 0"),
    (["--cache", "first-block:nan"], "the threshold must be above 0"),
    (["--cache", "later:0.2"], "unknown cache (known: first-block:THRESHOLD, mag:THRESHOLD)"),
    (["--cache", "mag:-1"], "the threshold must be above 0 (0.02 to 0.3 are usual)"),
    (["--trace-plan", "t.plan.toml"], "--trace-plan needs --cache"),
    (["--cache", "first-block:0.2", "--plan", "x.plan.toml"], "cannot be combined with --plan"),
    (["--cache", "first-block:0.2", "--trace-plan", "t.plan.toml", "--prompt", PROMPT, "--prompt",
      "a small blue square at the top"], "give one prompt"),
    (["--cache", "first-block:0.2", "--trace-plan", "no/such/folder/t.plan.toml"], "is not a folder"),
])
def test_bad_input_is_one_line(args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.plan.toml").write_text('version = 1\n[order]\nsingle = "0-11"\n')
    assert run_cli("toy-flux", *args, "--device", "cpu", "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out").exists()


def test_families_without_the_hooks_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for model in ("toy-sd3", "toy-auraflow"):
        assert run_cli(model, "--cache", "first-block:0.2", "--device", "cpu", "--out", str(tmp_path / model)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "only the flux family has them" in err[0], err


def test_the_mag_trace_plan_reuses_every_block_on_skipped_steps() -> None:
    plan = trace_plan(FLUX, [0, 1, 4], 6, name="t", note="n", head=False)
    assert dict(plan.orders) == {"double": (Cached(0, 5, "reuse"),), "single": (Cached(0, 11, "reuse"),)}
    assert plan.step_orders == (StepTable((0, 1, 4)),)
    plans.validate(plan, FLUX)
    plans.validate_steps(plan, 6)


def test_mag_calibration_is_the_ratio_of_residual_norms(tiny_generator: Callable[[str], Any]) -> None:
    """MagCache's calibration run (nothing skipped: the image is the full model's) against ratios computed
    by hand from hooks on the first block's input and the last block's output: the mean over tokens of
    |residual at step i| / |residual at step i-1|, 1 at step 0."""
    import torch

    generator = tiny_generator("toy-flux")
    transformer = generator.loaded.transformer
    settings = resolve_settings(MODELS["toy-flux"].defaults)
    full = np.asarray(generator.generate(PROMPT, settings, Plan()).image)
    inputs: list[Any] = []
    residuals: list[Any] = []
    head = transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append(kwargs["hidden_states"].float()), with_kwargs=True)
    tail = transformer.single_transformer_blocks[11].register_forward_hook(
        lambda m, args, out: residuals.append(out[1].float() - inputs[-1]))
    try:
        with mag_cache(transformer, FLUX, 0.1, settings.steps, None) as trace:
            calibrated = np.asarray(generator.generate(PROMPT, settings, Plan(), on_step=trace.on_step).image)
    finally:
        head.remove()
        tail.remove()
    by_hand = [1.0] + [float((torch.linalg.norm(b, dim=-1) / (torch.linalg.norm(a, dim=-1) + 1e-8)).mean())
                       for a, b in itertools.pairwise(residuals)]
    assert len(trace.ratios) == settings.steps
    assert trace.ratios == pytest.approx(by_hand, rel=1e-5)
    assert np.array_equal(calibrated, full) and trace.computed == list(range(settings.steps))
