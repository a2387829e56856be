"""`dit-explore bench` on the CPU with a tiny model (fast path), and on a GPU when there is one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dit_explore.engine.bench import block_flops, capture_step_inputs, plan_flops, run_bench
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.generate import Generator
from dit_explore.tui.cli import main

SETTINGS = Settings(seed=0, steps=2, width=64, height=64, guidance=0.0, max_sequence_length=32)


def test_flop_accounting_matches_the_plan(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    inputs = capture_step_inputs(gen, SETTINGS)
    total, per_block = block_flops(gen.loaded, inputs)
    assert set(per_block) == {("double", i) for i in range(4)} | {("single", i) for i in range(8)}
    assert all(f > 0 for f in per_block.values()) and sum(per_block.values()) < total
    identity = plans.Plan()
    assert plan_flops(identity, gen.loaded, total, per_block) == pytest.approx(total)
    skip = identity.with_order("single", plans.parse_order("0, 7"))
    expected = total - sum(per_block[("single", i)] for i in range(1, 7))
    assert plan_flops(skip, gen.loaded, total, per_block) == pytest.approx(expected)
    looped = identity.with_order("single", plans.parse_order("0, [1-2]x3, 3-7"))
    extra = 2 * (per_block[("single", 1)] + per_block[("single", 2)])  # three passes instead of one
    assert plan_flops(looped, gen.loaded, total, per_block) == pytest.approx(total + extra)
    # all single blocks have the same shape, so the same work
    assert len({per_block[("single", i)] for i in range(8)}) == 1


def test_bench_report_has_every_section(tiny_generator: Callable[[str], Generator]) -> None:
    report = run_bench(tiny_generator("tiny-flux"), SETTINGS, repeats=2).to_json()
    assert {"header", "overhead", "skip", "parallel", "similarity", "end_to_end", "throughput"} <= set(report)
    assert report["header"]["model"] == "tiny-flux" and report["header"]["device"] == "cpu"
    skips = report["skip"]
    assert [s["plan"] for s in skips] == ["single: 0, 6-7", "single: 0, 7"]  # 5 and 6 (of 8) middle blocks
    assert skips[0]["ideal_ratio"] > skips[1]["ideal_ratio"] > 0
    assert all(s["step_ms"] > 0 and s["measured_ratio"] > 0 for s in skips)
    assert [p["group"] for p in report["parallel"]] == ["single [2-3]x1", "single [2-5]x1", "single [2-5]x3"]
    assert all(p["ratio"] == pytest.approx(p["group_ms"] / p["members_ms"]) for p in report["parallel"])
    assert report["parallel_in_step"][0]["group"] == "single [2-5]x1"
    # reuse and forecast of single 2-3 (of 8): ideal = the step without those two blocks' FLOPs
    inputs = capture_step_inputs(tiny_generator("tiny-flux"), SETTINGS)
    total, per_block = block_flops(tiny_generator("tiny-flux").loaded, inputs)
    ideal = (total - per_block[("single", 2)] - per_block[("single", 3)]) / total
    assert [c["plan"] for c in report["cached"]] == ["single: 0-1, 2-3@reuse, 4-7", "single: 0-1, 2-3@forecast, 4-7"]
    assert all(c["ideal_ratio"] == pytest.approx(ideal) and c["measured_ratio"] > 0 for c in report["cached"])
    assert report["end_to_end"][0]["steps"] == 2 and report["end_to_end"][0]["total_s"] > 0
    throughput = report["throughput"][0]
    assert throughput["achieved_tflops"] > 0 and throughput["matmul_peak_tflops"] > 0


def test_bench_group_and_cached_variants_do_the_work_they_time(tiny_generator: Callable[[str], Generator]) -> None:
    """What the bench times: its group and its one-after-another chain call each member `loops` times on the
    captured block inputs; at the cached step, the reused span's blocks are not called at all."""
    from dit_explore.engine.bench import _cached_variant, _group_against_members, capture_block_inputs

    loaded = tiny_generator("tiny-flux").loaded
    transformer, blocks = loaded.transformer, loaded.transformer.single_transformer_blocks
    inputs = capture_step_inputs(tiny_generator("tiny-flux"), SETTINGS)
    calls: list[int] = []
    handles = [b.register_forward_pre_hook(lambda _m, _a, i=i: calls.append(i)) for i, b in enumerate(blocks)]
    try:
        block_inputs = capture_block_inputs(transformer, blocks[2], inputs)
        assert torch.equal(block_inputs.kwargs["hidden_states"] if "hidden_states" in block_inputs.kwargs
                           else block_inputs.args[0], _hidden_into(transformer, blocks[2], inputs))
        variants, call = _group_against_members([blocks[2], blocks[3], blocks[4]], 2, loaded.family.stack("single").io,
                                                block_inputs)
        for name in ("members", "group"):
            calls.clear()
            with variants[name]():
                call()
            assert sorted(calls) == [2, 2, 3, 3, 4, 4], name
        plan, variant = _cached_variant(transformer, loaded.layout, "single", 8, (2, 5), "forecast",
                                        lambda: inputs(transformer))
        assert plan.order("single") == plans.parse_order("0-1, 2-5@forecast, 6-7")
        with torch.no_grad(), variant():
            calls.clear()
            inputs(transformer)
            assert calls == [0, 1, 6, 7]
        with torch.no_grad():  # the plan is gone after the variant
            calls.clear()
            inputs(transformer)
            assert calls == list(range(8))
    finally:
        for h in handles:
            h.remove()


def _hidden_into(transformer: torch.nn.Module, block: torch.nn.Module, inputs: object) -> torch.Tensor:
    """The image stream entering `block` in a full call, recorded by a hook written here."""
    seen: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        assert isinstance(hidden, torch.Tensor)
        seen.append(hidden.clone())

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            inputs(transformer)  # type: ignore[operator]
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize(("model", "stack"), [("tiny-sd3", "double"), ("tiny-auraflow", "single")])
def test_bench_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, stack: str) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", model, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["header"]["model"] == model and data["skip"][0]["plan"].startswith(f"{stack}: ")
    # CFG families: what a split batch and an extra pass cost, against their FLOPs (1 and 1 + a half step)
    branches = {row["plan"]: row for row in data["branches"]}
    assert branches["[uncond] with the same orders (the batch split)"]["ideal_ratio"] == 1.0
    assert 1.4 < branches["[extra] of the full model"]["ideal_ratio"] <= 1.5
    slg = next(row for name, row in branches.items() if name.startswith(f"[extra] {stack}: "))
    assert 1.0 < slg["ideal_ratio"] < branches["[extra] of the full model"]["ideal_ratio"]
    assert all(row["measured_ratio"] > 0 for row in branches.values())
    printed = capsys.readouterr().out
    assert "overhead" in printed and "ideal_ratio" in printed


@pytest.mark.gpu
def test_bench_smoke_on_gpu_with_compile(tiny_generator: Callable[[str], Generator]) -> None:
    """On a GPU: the bench path with regional compilation, and no recompilation after a plan change."""
    import torch as _torch

    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.models import load

    loaded = load(resolve("tiny-flux"), _torch.device("cuda"), _torch.bfloat16)
    report = run_bench(Generator(loaded), SETTINGS, compile=True, repeats=3).to_json()
    assert report["compile_plan_change"][0]["graphs_compiled"] == 0
    assert report["compile"][0]["compiled_step_ms"] > 0
    assert report["similarity"][0]["extra_peak_gib"] >= 0


@pytest.mark.gpu
def test_identity_plan_is_bit_identical_on_gpu() -> None:
    import numpy as np

    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.models import load

    loaded = load(resolve("tiny-flux"), torch.device("cuda"), torch.bfloat16)
    gen = Generator(loaded)
    ours = gen.generate("a red cube", SETTINGS, plans.Plan()).image
    plain = loaded.pipe(prompt="a red cube", num_inference_steps=2, width=64, height=64, guidance_scale=0.0,
                        generator=torch.Generator("cpu").manual_seed(0), max_sequence_length=32).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(plain))
