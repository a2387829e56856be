"""The memory plan (engine/core/placement.py) and the placements that move weights (engine/placement.py).

The planner's verdicts are checked against sums computed here from the families' per-block parameter
counts (themselves checked against the real classes in test_memory.py). The mechanics run on the CPU
with copies standing in for the device: every placement's images equal the full placement's bit for bit,
and the blocks come in in the order the plan calls them. tests/engine/test_placement_gpu.py runs the
same on a GPU (side stream, pinned memory, compiled blocks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dit_explore.engine.core.memory import estimate, format_bytes, text_encoder_parameters, text_encoders
from dit_explore.engine.core.placement import COPY_ROUNDING, PlacementError, candidates, plan_placement
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve

GB = 10**9


def _flux_parts() -> tuple[Any, list[int], list[int], int, int]:
    """Real-size Flux in bf16 at 1024 px: the estimate, each block's bytes, each encoder's, the bytes on the
    device whatever the setting while denoising (context, every phase's working memory, VAE, the
    transformer outside its blocks) and while encoding (the same with only the encoding's working memory)."""
    source = resolve("flux-schnell")
    est = estimate(source, 1024, 1024, dtype="bfloat16", device_kind="cuda")
    counts = source.family_info.block_parameters(source.transformer_config)
    assert counts is not None
    blocks = [2 * n for n in counts[1]["double"] + counts[1]["single"]]
    encoders = [2 * text_encoder_parameters(e) for e in text_encoders(source)]
    weights = est.parts["VAE weights"] + 2 * counts[0]
    fixed = est.context + est.working + weights
    encoding = est.context + est.runtime + est.allocator + est.phases["text encoding"] + weights
    return est, blocks, encoders, fixed, encoding


def moved(n: int) -> int:
    return int(n * COPY_ROUNDING)


def test_full_is_the_estimate_and_offload_trades_the_encoders_for_the_largest() -> None:
    est, blocks, encoders, fixed, encoding = _flux_parts()
    places = candidates(resolve("flux-schnell"), 1024, 1024, 200 * GB, dtype="bfloat16")
    assert places["full"].peak == est.total == fixed + sum(blocks) + sum(encoders)
    # Encoding (the largest encoder beside the blocks) and denoising peak apart.
    beside = encoding + moved(sum(blocks)) + moved(max(encoders))
    assert places["offload"].peak == max(fixed + moved(sum(blocks)), beside) == beside
    assert not places["offload"].evict_for_encoding
    # T5-XXL is 9.5 GB of the two encoders' 9.8 GB.
    assert 9.4 * GB < max(encoders) < 9.6 * GB < sum(encoders) < 9.9 * GB


def test_auto_picks_the_most_resident_setting_that_fits() -> None:
    source = resolve("flux-schnell")
    _est, blocks, encoders, fixed, encoding = _flux_parts()
    options: dict[str, Any] = dict(dtype="bfloat16")
    full = fixed + sum(blocks) + sum(encoders)
    assert plan_placement(source, 1024, 1024, full, **options).setting == "full"
    assert plan_placement(source, 1024, 1024, full - 1, **options).setting == "offload"
    # Not beside the largest encoder: the blocks step aside while it encodes.
    denoise = fixed + moved(sum(blocks))
    offload = plan_placement(source, 1024, 1024, denoise + 1, **options)
    assert offload.setting == "offload" and offload.evict_for_encoding and offload.peak == denoise
    # A 24 GB card: 22.5 GB for the allocator. The first k blocks stay, beside two slots for streamed ones.
    cap = int(22.5 * GB)
    seq = plan_placement(source, 1024, 1024, cap, **options)
    k = seq.resident_blocks
    copied = [moved(b) for b in blocks]
    assert seq.setting == "sequential" and 0 < k < len(blocks) and seq.peak <= cap
    buffer = 2 * max(blocks[k:])  # two slots: the running block's and the prefetched one's
    assert fixed + sum(copied[:k]) + buffer <= cap < fixed + sum(copied[:k + 1]) + 2 * max(blocks[k + 1:] or [0])
    assert seq.resident_bytes == sum(blocks[:k]) and seq.evict_for_encoding
    assert seq.peak == max(fixed + sum(copied[:k]) + buffer, encoding + moved(max(encoders)))
    assert f"{k} of 57 blocks resident" in seq.describe()


def test_a_setting_that_cannot_fit_is_refused_naming_one_that_does() -> None:
    source = resolve("flux-schnell")
    with pytest.raises(PlacementError) as refused:
        plan_placement(source, 1024, 1024, int(22.5 * GB), "full", dtype="bfloat16", where="cuda:0 (a 24 GB card)")
    line = str(refused.value)
    full = candidates(source, 1024, 1024, int(22.5 * GB), dtype="bfloat16")
    assert "\n" not in line and line.startswith(f"--memory full needs about {format_bytes(full['full'].peak)} for "
                                                 "flux-schnell at 1024x1024 but cuda:0 (a 24 GB card) has 22 GB free")
    assert line.endswith(f"; --memory sequential fits ({full['sequential'].details()})")
    with pytest.raises(PlacementError) as nothing:
        plan_placement(source, 1024, 1024, 8 * GB, dtype="bfloat16")
    assert "even streaming every block" in str(nothing.value) and "--quantize int8" in str(nothing.value)
    # 8-bit blocks halve what the blocks need: at 22.5 GB more of them stay.
    plain = plan_placement(source, 1024, 1024, int(22.5 * GB), dtype="bfloat16")
    quantized = plan_placement(source, 1024, 1024, int(22.5 * GB), dtype="bfloat16", quantization="int8")
    assert quantized.resident_blocks > plain.resident_blocks


def test_the_cpu_has_one_memory() -> None:
    source = resolve("toy-flux")
    assert plan_placement(source, 64, 64, None, "auto", device_kind="cpu").setting == "full"
    with pytest.raises(PlacementError, match="on the cpu everything is in one memory"):
        plan_placement(source, 64, 64, None, "offload", device_kind="cpu")


def test_cli_refuses_a_placement_on_the_cpu_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dit_explore.tui.cli import main

    assert main(["run", "toy-flux", "--device", "cpu", "--memory", "sequential", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--memory sequential moves weights between host memory and a GPU" in err[0]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- mechanics


@pytest.fixture(scope="module")
def toy() -> Callable[[str, int], Any]:
    """toy-flux loaded on the CPU under a placement: `full`, or `offload` / `sequential` with the first
    `resident` blocks resident (the blocks evicted while an encoder runs)."""
    import torch

    from dit_explore.engine.models import load

    source = resolve("toy-flux")
    places = candidates(source, 64, 64, None, device_kind="cpu", dtype="float32")
    cache: dict[tuple[str, int], Any] = {}

    def get(setting: str, resident: int = 0) -> Any:
        if (setting, resident) not in cache:
            placement = None if setting == "full" else dataclasses.replace(
                places[setting], resident_blocks=resident, evict_for_encoding=True)
            cache[setting, resident] = load(source, torch.device("cpu"), torch.float32, placement=placement)
        return cache[setting, resident]

    return get


PLANS = {
    "identity": Plan(),
    "reordered": Plan(orders=(("double", parse_order("0, 1, 2, 5, 5, 4, 3, [1-3]x2")),
                              ("single", parse_order("11, 10, [0-3], 4-9")))),
    "cached": Plan(orders=(("single", parse_order("0-1, 2-9@reuse, 10-11")),)),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_every_placement_draws_the_full_placements_image(toy: Callable[..., Any], name: str) -> None:
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.generate import Generator

    source = resolve("toy-flux")
    settings = dataclasses.replace(resolve_settings(source.defaults), steps=4)
    want = np.asarray(Generator(toy("full")).generate("a red circle", settings, PLANS[name]).image)
    for setting, resident in (("offload", 18), ("sequential", 3), ("sequential", 0)):
        got = Generator(toy(setting, resident)).generate("a red circle", settings, PLANS[name]).image
        assert np.array_equal(np.asarray(got), want), (setting, resident)


def test_blocks_come_in_in_the_order_the_plan_calls_them(toy: Callable[..., Any]) -> None:
    """Each streamed block is fetched once per call of it (a repeat right after itself stays), the next
    one in the plan's order while the current one runs: two streamed blocks at most on the device."""
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.generate import Generator

    loaded = toy("sequential", 3)
    residency = loaded.residency
    source = resolve("toy-flux")
    settings = dataclasses.replace(resolve_settings(source.defaults), steps=2)
    generator = Generator(loaded)
    generator.generate("a blue square", settings, PLANS["identity"])  # encodes; the resident blocks come back
    residency.log = []
    generator.generate("a blue square", settings, PLANS["reordered"])
    # The calls, by hand: double 0 1 2 5 5 4 3 (1 2 3)(1 2 3), single (6 + i) 17 16 (6 7 8 9) 10..15; blocks
    # 0-2 resident. The streamed ones, a block's next call merged where only resident ones run between:
    # 5 4 3 17 16 6-15, each step; the last block of the last step prefetches the next call's first (5).
    streamed = [5, 4, 3, 17, 16, *range(6, 16)]
    fetched = [int(e.split()[1]) for e in residency.log if e.startswith("fetch")]
    assert fetched == streamed * 2 + [5]
    on_device = 0
    peak = 0
    for e in residency.log:
        on_device += 1 if e.startswith("fetch") else -1
        peak = max(peak, on_device)
    assert peak <= 2


def test_encoders_visit_the_device_once_per_new_prompt(toy: Callable[..., Any]) -> None:
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.generate import Generator

    loaded = toy("offload", 18)
    residency = loaded.residency
    calls: list[int] = []
    hooks = [u.module.register_forward_pre_hook(lambda _m, _a, i=i: calls.append(i))
             for i, u in enumerate(residency.encoders)]
    try:
        settings = dataclasses.replace(resolve_settings(resolve("toy-flux").defaults), steps=2)
        generator = Generator(loaded)
        generator.generate("a green triangle", settings, PLANS["identity"])
        assert sorted(set(calls)) == [0, 1] and not any(u.on_device for u in residency.encoders)
        calls.clear()
        generator.generate("a green triangle", settings, PLANS["reordered"])  # a plan change: cached embeddings
        assert calls == []
    finally:
        for hook in hooks:
            hook.remove()


def test_a_cancel_inside_an_encoder_still_sends_it_off_the_device(toy: Callable[..., Any]) -> None:
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.executor import Cancelled
    from dit_explore.engine.generate import Generator

    residency = toy("offload", 18).residency
    calls = [0]

    def check() -> None:  # runs before each layer of the text encoders: cancel inside the first one
        calls[0] += 1
        if calls[0] == 3:
            raise Cancelled()

    settings = resolve_settings(resolve("toy-flux").defaults)
    with pytest.raises(Cancelled):
        Generator(toy("offload", 18)).embeddings("a cancelled prompt", settings, check)
    assert calls[0] == 3 and not any(u.on_device for u in residency.encoders)


def test_the_similarity_analysis_runs_on_streamed_blocks(toy: Callable[..., Any]) -> None:
    import torch

    from dit_explore.engine.analysis import analyze
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.generate import Generator

    settings = dataclasses.replace(resolve_settings(resolve("toy-flux").defaults), steps=3)
    full = analyze(Generator(toy("full")), ["a red circle"], settings)
    streamed = analyze(Generator(toy("sequential", 3)), ["a red circle"], settings)
    assert torch.equal(torch.as_tensor(full.matrix), torch.as_tensor(streamed.matrix))


def test_run_json_and_png_record_the_placement(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from dit_explore.engine.core.runs import PNG_PLACEMENT_KEY, png_bytes
    from dit_explore.tui.cli import main

    assert main(["run", "toy-flux", "--device", "cpu", "--steps", "2", "--out", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["placement"]["setting"] == "full" and record["placement"]["resident_blocks"] == 18
    with Image.open(tmp_path / "o" / "000.png") as image:
        assert PNG_PLACEMENT_KEY not in image.text  # all on the device: nothing to say
    (tmp_path / "p.png").write_bytes(png_bytes(Image.new("RGB", (8, 8)), Plan(), None, "sequential (3 of 18 blocks)"))
    with Image.open(tmp_path / "p.png") as image:
        assert image.text[PNG_PLACEMENT_KEY] == "sequential (3 of 18 blocks)"


BRANCHED = """version = 2
name = "steps and branches"

[order]
double = "0-5, 7, 6, 8-11"

[[steps]]
steps = "0"
[steps.order]

[uncond]
steps = "0-4"
[uncond.order]
double = "0-3, 8-11"

[extra]
scale = 2.0
steps = "1-3"
[extra.order]
double = "0-1, 6-11"
"""


def test_step_tables_and_guidance_branches_stream_too() -> None:
    """toy-sd3 (classifier-free guidance): a plan whose orders change by step, whose unconditional pass runs
    its own order and which adds an extra pass, under `sequential` with 4 of 12 blocks resident, draws the
    full placement's image bit for bit: every set of lists the executor installs gets its own schedule."""
    import torch

    from dit_explore.engine.core import plan as plans
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import load

    source = resolve("toy-sd3")
    plan = plans.loads(BRANCHED, "branched.plan.toml")
    settings = dataclasses.replace(resolve_settings(source.defaults), steps=5, guidance=4.0)
    place = dataclasses.replace(candidates(source, 64, 64, None, device_kind="cpu", dtype="float32")["sequential"],
                                resident_blocks=4, evict_for_encoding=True)
    full = Generator(load(source, torch.device("cpu"), torch.float32))
    streamed = Generator(load(source, torch.device("cpu"), torch.float32, placement=place))
    want = np.asarray(full.generate("a red circle", settings, plan).image)
    assert np.array_equal(np.asarray(streamed.generate("a red circle", settings, plan).image), want)
    assert streamed.loaded.residency.fetches > 0


def test_models_memory_on_a_gpu_says_where_auto_puts_each_alias(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """On a GPU, `dit-explore models --memory` adds the placement `--memory auto` would pick (a 24 GB card's
    22.5 GB here, stood in for on the CPU machine), the plan's own description."""
    import torch

    from dit_explore.engine import headless, models
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.tui.cli import main

    free = int(22.5 * GB)
    monkeypatch.setattr(headless, "_device_and_dtype", lambda _name, _dtype: (torch.device("cuda"), "bfloat16"))
    monkeypatch.setattr(models, "free_memory", lambda _device: (free, "cuda:0 (a 24 GB card)"))
    assert main(["models", "--memory", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("--memory auto")
    for alias in ("flux-schnell", "sd3-medium", "toy-flux"):
        source = resolve(alias)
        settings = resolve_settings(source.defaults)
        want = plan_placement(source, settings.width, settings.height, free, guidance=settings.guidance,
                              dtype="bfloat16", max_sequence_length=settings.max_sequence_length).describe()
        assert next(line for line in lines if line.startswith(alias + " ")).endswith(want), alias
    flux = next(line for line in lines if line.startswith("flux-schnell "))
    assert "sequential (" in flux and lines[-1].startswith("--memory auto:")


def test_quantized_blocks_with_a_streaming_placement_are_refused_with_the_reason() -> None:
    import torch

    from dit_explore.engine.core.resolve import ModelError
    from dit_explore.engine.models import load

    source = resolve("toy-flux")
    place = candidates(source, 64, 64, None, device_kind="cpu", dtype="float32")["sequential"]
    with pytest.raises(ModelError) as refused:
        load(source, torch.device("cpu"), torch.float32, quantize="int8", placement=place)
    assert str(refused.value).startswith("--quantize int8 with --memory sequential is not supported: torchao's")
    assert "\n" not in str(refused.value)
