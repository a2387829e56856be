"""The frontier benchmark's strategies are the plans it says, at the costs worked out by hand."""

from __future__ import annotations

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.sampling import block_runs
from dit_explore.engine.frontier import STRATEGIES, markdown, strategy_plan

FLUX = MODELS["toy-flux"].layout  # double 6 + single 12: 18 blocks a step, 360 in 20 steps


def test_each_strategy_costs_what_it_says() -> None:
    # Executions of 20 steps by hand: skip 4-11 leaves 10 a step; 6-9 leaves 14; the per-step and the
    # every-2nd plans run 18 on 10 steps and 10 on the others; every 3rd computes on 7 steps (0, 3, ... 18).
    expected = {"skip 4-11, every step": 200, "skip 6-9, every step": 280, "skip 4-11, second half of the steps": 280,
                "4-11@reuse, full every 2nd step": 280, "4-11@reuse, full every 3rd step": 7 * 18 + 13 * 10,
                "4-11@forecast, full every 2nd step": 280, "4-11@forecast, full every 3rd step": 7 * 18 + 13 * 10}
    for name, kind, value in STRATEGIES:
        if kind == "dynamic":
            continue
        plan = strategy_plan(kind, value, 20)
        plans.validate(plan, FLUX)
        plans.validate_steps(plan, 20)
        assert block_runs(plan, FLUX, 20).total == expected[name], name
    half = strategy_plan("per-step", "half", 20)
    assert half.step_orders[0].steps == tuple(range(10, 20))


def test_the_table() -> None:
    row = {"strategy": "x", "ssim": 0.5, "all_correct": 0.25, "executions": 0.75, "predicted_speedup": 4 / 3,
           "measured_speedup": 1.2}
    assert "| x | 0.500 | 25.0% | 0.750 | 1.33× | 1.20× |" in markdown({"rows": [row]})
