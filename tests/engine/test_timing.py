"""Timing you can trust: warm medians, the plan against the full model side by side on the same inputs,
and each block's share of a step."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace

import pytest

from dit_explore.engine.core import protocol
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.sampling import Timing, resolve_settings
from dit_explore.engine.generate import Generator
from dit_explore.engine.timing import side_by_side
from dit_explore.tui.widgets.status_panel import timing_text


def timing(steps: tuple[float, ...]) -> Timing:
    return Timing(total=1.0, text_encode=0.0, text_encode_cached=True, transformer_steps=steps, decode=0.1)


def test_the_warm_step_leaves_out_the_first_and_takes_the_median() -> None:
    assert timing((9.0, 0.2, 0.4, 0.3)).warm_step == 0.3 and timing((9.0, 0.2, 0.4, 0.3)).warm_steps == 3
    assert timing((9.0, 0.2, 0.4)).warm_step == pytest.approx(0.3)
    assert timing((9.0, 0.2)).warm_step == 0.2 and timing((9.0, 0.2)).warm_steps == 1
    assert timing((9.0,)).warm_step is None


def test_the_measured_speedup_covers_the_plans_active_steps() -> None:
    every = protocol.Speed(job=1, plan=0.5, full=1.0, calls=3, steps=4, active=4, blocks={})
    assert every.speedup == 2.0
    half = protocol.Speed(job=1, plan=0.5, full=1.0, calls=3, steps=4, active=2, blocks={})
    assert half.speedup == pytest.approx(4 / 3)  # 4 full steps against 2 halves and 2 full


def test_the_status_says_how_each_number_was_measured() -> None:
    from dit_explore.engine.core.sampling import BlockRuns

    runs = BlockRuns(full_per_step={"single": 8}, per_step=({"single": 4},) * 2, total=8, full_total=16)
    text = str(timing_text(timing((9.0, 0.25)), timing((9.0, 0.5)), runs))
    assert "transformer 250 ms/step (1 warm step: noisy)" in text
    assert "measured … (timing side by side) · predicted 2.00×" in text  # never the cold baseline's ratio
    speed = protocol.Speed(job=1, plan=0.26, full=0.5, calls=3, steps=2, active=2, blocks={})
    text = str(timing_text(timing((9.0, 0.25, 0.27)), timing((9.0, 0.5)), runs, speed))
    assert "(median of 2 warm steps)" in text
    assert "measured 1.92× (side by side, 3 warm calls each) · predicted 2.00×" in text
    fast = Timing(total=0.0094, text_encode=0.0123, text_encode_cached=False, transformer_steps=(0.5, 0.0042),
                  decode=0.00031)
    assert "total 9.4 ms · transformer 4.2 ms/step (1 warm step: noisy) · text encode 12 ms · decode 0.3 ms" in str(
        timing_text(fast, None, runs))
    assert "total 12.5 s" in str(timing_text(replace(fast, total=12.5), None, runs))
    assert "total 10 ms" in str(timing_text(replace(fast, total=0.00996), None, runs))  # never "10.0 ms"


def step_inputs(gen: Generator):  # type: ignore[no-untyped-def]
    settings = resolve_settings(gen.loaded.source.defaults)
    result = gen.generate("a timed lighthouse", settings, Plan(), decode=False)
    assert result.last_inputs is not None
    return result.last_inputs


def test_side_by_side_times_both_on_the_same_inputs(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    loaded = gen.loaded
    inputs = step_inputs(gen)
    # Nine of the twelve blocks left out: the plan must measure clearly faster than the full model.
    skip = Plan().with_order("double", parse_order("0")).with_order("single", parse_order("0, 7"))
    timed = side_by_side(loaded.transformer, loaded.layout, skip, inputs, loaded.device, calls=5)
    assert timed.calls == 5 and 0 < timed.plan < timed.identity
    assert [len(timed.blocks[s.name]) for s in loaded.layout.stacks] == [4, 8]
    assert all(t > 0 for times in timed.blocks.values() for t in times)
    assert type(loaded.transformer.single_transformer_blocks).__name__ == "ModuleList"  # restored


def test_an_equal_cost_plan_measures_about_the_same(tiny_generator: Callable[[str], Generator]) -> None:
    """Reversed blocks cost what the full model costs: warm, side by side, the ratio stays near 1 (the
    old cold-against-warm comparison read 0.58x here)."""
    gen = tiny_generator("tiny-flux")
    loaded = gen.loaded
    inputs = step_inputs(gen)
    reverse = Plan().with_order("single", parse_order("7-0"))
    ratios = [side_by_side(loaded.transformer, loaded.layout, reverse, inputs, loaded.device, calls=5)
              for _ in range(3)]
    assert 0.75 < statistics.median(t.identity / t.plan for t in ratios) < 1.33


def test_a_cached_plan_is_timed_as_it_runs_after_the_first_step(tiny_generator: Callable[[str], Generator]) -> None:
    """Reusing seven of eight single blocks (and skipping three of four double ones) runs far fewer blocks
    after the first step: timed side by side it must measure clearly faster than the full model, as the
    same blocks skipped do; timed as if every call were a first step it would measure the full model's
    cost. The first step is a set of orders of its own, with the span computed."""
    from dit_explore.engine.core.sampling import step_variants

    gen = tiny_generator("tiny-flux")
    loaded = gen.loaded
    inputs = step_inputs(gen)
    cached = Plan().with_order("double", parse_order("0")).with_order("single", parse_order("0, 1-7@reuse"))
    timed = side_by_side(loaded.transformer, loaded.layout, cached, inputs, loaded.device, calls=5)
    assert 0 < timed.plan < 0.6 * timed.identity, (timed.plan, timed.identity)
    variants = step_variants(cached, loaded.layout, 4)
    assert [(dict(p.orders)["single"], n) for p, n in variants] == [(parse_order("0-7"), 1), (parse_order("0, 1-7@reuse"), 3)]
