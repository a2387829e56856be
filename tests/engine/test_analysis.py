"""The similarity matrix against an independent computation: forward hooks on the blocks of plain
diffusers pipelines, cosines computed per token in numpy (float64)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dit_explore.engine.analysis import CaptureBlock, analyze
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.core.similarity import SIMILARITY_JSON, SIMILARITY_PNG, group_blocks, read_result
from dit_explore.engine.executor import Cancelled, PlanList
from dit_explore.engine.generate import Generator
from dit_explore.tui.cli import main

PROMPTS = ["a red cube on a table", "a city at night"]
GUIDANCE = {"tiny-flux": 0.0, "tiny-sd3": 7.0, "tiny-auraflow": 3.5}


def settings_for(model: str) -> Settings:
    return Settings(seed=3, steps=2, width=64, height=64, guidance=GUIDANCE[model], max_sequence_length=32)


def reference_matrix(gen: Generator, settings: Settings, row: int = -1, take_last: bool = True) -> np.ndarray:
    """Run plain diffusers with hooks; average per-step token-mean cosines (by hand, in float64)."""
    loaded = gen.loaded
    blocks = [b for s in loaded.layout.stacks for b in getattr(loaded.transformer, s.attr)]
    image_tokens = (settings.height // 8) * (settings.width // 8)  # tiny models: 8-pixel patches
    outputs: list[np.ndarray] = []

    def hook(_module: nn.Module, _args: Any, out: Any) -> None:
        hidden = out[1] if isinstance(out, tuple) else (out[:, -image_tokens:] if take_last else out[:, :image_tokens])
        outputs.append(hidden[row].detach().double().numpy())

    handles = [b.register_forward_hook(hook) for b in blocks]
    total = np.zeros((len(blocks), len(blocks)))
    steps = 0

    def on_step(_pipe: Any, _i: int, _t: Any, _kw: dict[str, Any]) -> dict[str, Any]:
        nonlocal total, steps
        assert len(outputs) == len(blocks)
        unit = [h / np.linalg.norm(h, axis=-1, keepdims=True) for h in outputs]
        step = np.array([[np.mean(np.sum(a * b, axis=-1)) for b in unit] for a in unit])
        total, steps = total + step, steps + 1
        outputs.clear()
        return {}

    try:
        for prompt in PROMPTS:
            gen.pipe(prompt=prompt, num_inference_steps=settings.steps, width=settings.width, height=settings.height,
                     guidance_scale=settings.guidance, generator=torch.Generator("cpu").manual_seed(settings.seed),
                     max_sequence_length=settings.max_sequence_length, output_type="latent",
                     callback_on_step_end=on_step)
    finally:
        for h in handles:
            h.remove()
    return total / steps


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3", "tiny-auraflow"])
def test_matrix_matches_an_independent_computation(tiny_generator: Callable[[str], Generator], model: str) -> None:
    gen = tiny_generator(model)
    settings = settings_for(model)
    result = analyze(gen, PROMPTS, settings)
    measured = np.array(result.matrix)
    expected = reference_matrix(gen, settings)
    np.testing.assert_allclose(measured, expected, atol=2e-5)
    np.testing.assert_allclose(measured, measured.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(measured), 1.0, atol=1e-5)
    assert measured.min() < 0.95  # the tiny models have structure: the matrix is not trivially all ones
    # per-stack matrices are the diagonal blocks of the all-blocks matrix, in execution order
    start = 0
    for stack in gen.loaded.layout.stacks:
        sub = measured[start : start + stack.blocks, start : start + stack.blocks]
        np.testing.assert_allclose(np.array(result.stacks[stack.name].matrix), sub)
        assert result.stacks[stack.name].groups == group_blocks(sub)
        start += stack.blocks
    assert result.order == [(s.name, i) for s in gen.loaded.layout.stacks for i in range(s.blocks)]


def test_classifier_free_guidance_uses_the_conditional_row(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-sd3")  # guidance 7: the batch is [unconditional, conditional]
    settings = settings_for("tiny-sd3")
    measured = np.array(analyze(gen, PROMPTS, settings).matrix)
    unconditional = reference_matrix(gen, settings, row=0)
    assert np.abs(measured - unconditional).max() > 1e-3  # the rule matters here, and we follow it
    np.testing.assert_allclose(measured, reference_matrix(gen, settings, row=-1), atol=2e-5)


def test_auraflow_single_blocks_use_the_image_tokens(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-auraflow")  # single blocks return [text tokens, image tokens]
    settings = settings_for("tiny-auraflow")
    measured = np.array(analyze(gen, PROMPTS, settings).matrix)
    text_side = reference_matrix(gen, settings, take_last=False)
    assert np.abs(measured[2:, 2:] - text_side[2:, 2:]).max() > 1e-3
    np.testing.assert_allclose(measured, reference_matrix(gen, settings), atol=2e-5)


def test_nothing_is_left_attached_after_analysis_or_a_failure(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    transformer = gen.loaded.transformer
    before = {s.attr: getattr(transformer, s.attr) for s in gen.loaded.layout.stacks}
    calls = [0]

    def cancel_midway() -> None:
        calls[0] += 1
        if calls[0] == 20:
            raise Cancelled()

    analyze(gen, PROMPTS[:1], settings_for("tiny-flux"))
    with pytest.raises(Cancelled):
        analyze(gen, PROMPTS, settings_for("tiny-flux"), check=cancel_midway)
    assert all(getattr(transformer, attr) is blocks for attr, blocks in before.items())
    modules = list(transformer.modules())
    assert not any(isinstance(m, (CaptureBlock, PlanList)) for m in modules)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def test_analyze_and_plans_commands(tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    assert main(["analyze", "tiny-flux", "--prompt", "a red cube", "--prompt", "a dog", "--steps", "2",
                 "--out", str(out)]) == 0
    data = json.loads((out / SIMILARITY_JSON).read_text())
    assert set(data) >= {"stacks", "all", "prompts", "steps", "model", "seed"}
    assert data["prompts"] == ["a red cube", "a dog"] and data["steps"] == 2 and data["model"] == "tiny-flux"
    assert data["stacks"]["single"]["blocks"] == 8 and len(data["all"]["matrix"]) == 12
    assert data["all"]["order"][:5] == [["double", 0], ["double", 1], ["double", 2], ["double", 3], ["single", 0]]
    groups = data["stacks"]["single"]["groups"]
    assert groups[0][0] == 0 and groups[-1][1] == 7  # they cover the stack in order
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(groups))
    assert (out / SIMILARITY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --groups regroups the same (cached) matrices into exactly K groups
    fixed = tmp_path / "fixed"
    assert main(["analyze", "tiny-flux", "--prompt", "a red cube", "--prompt", "a dog", "--steps", "2",
                 "--groups", "2", "--out", str(fixed)]) == 0
    assert len(read_result(fixed).stacks["single"].groups) == 2
    assert read_result(fixed).stacks["single"].matrix == data["stacks"]["single"]["matrix"]

    plans_out = tmp_path / "plans"
    assert main(["plans", "tiny-flux", "--from-groups", str(out), "--out", str(plans_out)]) == 0
    from dit_explore.engine.core import plan as plans
    from dit_explore.engine.core.resolve import resolve

    written = sorted(plans_out.glob("*.plan.toml"))
    middles = [g for g in read_result(out).stacks["single"].groups[1:-1]]
    assert middles and len(written) >= 6 * len(middles)
    for path in written:
        plans.validate(plans.load(path), resolve("tiny-flux").layout)
    first, last = middles[0]
    skip = plans.load(next(p for p in written if p.name.startswith("single-middle1-2-skip-middle")))
    kept = [b for b in range(8) if not first <= b <= last]
    assert list(skip.order("single")) == kept


def test_analyze_rejects_bad_input_without_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "tiny-flux", "--width", "60", "--out", str(tmp_path / "x")]) == 2
    assert "not a multiple of 8" in capsys.readouterr().err
    assert main(["plans", "tiny-flux", "--from-groups", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such file or folder" in capsys.readouterr().err
