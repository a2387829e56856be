"""The metric check's pieces: seeded random plans that the model accepts, and Spearman's rho with MAD's sign
flipped, against values whose ranks are known."""

from __future__ import annotations

import pytest

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.metric_check import agreement, random_plans


def test_random_plans_are_seeded_distinct_and_valid() -> None:
    layout = MODELS["toy-flux"].layout
    made = random_plans(layout, 40, seed=0)
    assert [label for label, _ in made] == [label for label, _ in random_plans(layout, 40, seed=0)]
    assert len({label for label, _ in made}) == 40
    for label, plan in made:
        plans.validate(plan, layout, source=label)
        (stack, order), = plan.orders
        left = layout.stack(stack).blocks - len(order)
        assert 1 <= left <= layout.stack(stack).blocks // 2


def test_agreement_is_spearman_with_mad_negated() -> None:
    accuracy = [0.0, 0.2, 0.5, 0.9, 1.0]
    per_plan = [{"ssim": s, "psnr": p, "mad": m, "all_correct": a}
                for s, p, m, a in zip([0.1, 0.3, 0.4, 0.8, 0.95],  # same ranks: +1
                                      [30.0, 25.0, 20.0, 15.0, 10.0],  # reversed ranks: -1
                                      [40.0, 30.0, 20.0, 10.0, 1.0],  # falls as accuracy rises: +1 once negated
                                      accuracy)]
    rho = agreement(per_plan)
    assert rho["ssim"] == pytest.approx(1.0) and rho["psnr"] == pytest.approx(-1.0) and rho["mad"] == pytest.approx(1.0)
    assert rho["haarpsi"] is None and rho["fsim"] is None  # not measured in these rows
    assert agreement(per_plan[:2])["ssim"] is None  # too few plans to rank
