"""What a plan costs (engine/core/sampling.py): block executions per step and in total under active_steps and
step tables, and the distinct sets of orders a run goes through. Every count is worked out by hand."""

from __future__ import annotations

from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import Plan, loads, parse_order
from dit_explore.engine.core.sampling import block_runs, executions_per_step, step_variants

SMALL = Layout("flux", (Stack("double", "transformer_blocks", 4), Stack("single", "single_transformer_blocks", 8)))

PER_STEP = loads(
    'version = 2\n[order]\nsingle = "0, 7"\n'                                    # default: double 4, single 2
    '[[steps]]\nsteps = "0"\n[steps.order]\ndouble = "3-0, 0"\n'                # double 5, single 2 (default)
    '[[steps]]\nsteps = "2"\n[steps.order]\n'                                    # the full model: 4, 8
    '[[steps]]\nsteps = "3"\n[steps.order]\nsingle = "[1-3]x2"\ndouble = ""\n'  # double 0, single 6
)


def test_block_runs_of_a_plan_without_tables() -> None:
    runs = block_runs(Plan().with_order("single", parse_order("0-1, 6-7")), SMALL, 3)
    assert runs.per_step == ({"double": 4, "single": 4},) * 3
    assert (runs.total, runs.full_total, runs.full_per_step) == (24, 36, {"double": 4, "single": 8})
    assert runs.predicted_speedup == 1.5


def test_block_runs_with_active_steps() -> None:
    plan = Plan(orders=(("single", (0, 7)),), active_steps=(1, 3))
    runs = block_runs(plan, SMALL, 4)
    full, planned = {"double": 4, "single": 8}, {"double": 4, "single": 2}
    assert runs.per_step == (full, planned, full, planned)
    assert runs.total == 12 + 6 + 12 + 6


def test_block_runs_honour_each_step_table() -> None:
    runs = block_runs(PER_STEP, SMALL, 5)
    assert runs.per_step == (
        {"double": 5, "single": 2},  # step 0: the first table's double, the default single
        {"double": 4, "single": 2},  # step 1: the default
        {"double": 4, "single": 8},  # step 2: an empty table, the full model
        {"double": 0, "single": 6},  # step 3: both stacks from the table
        {"double": 4, "single": 2},  # step 4: the default again
    )
    assert (runs.total, runs.full_total) == (7 + 6 + 12 + 6 + 6, 60)
    assert runs.predicted_speedup == 60 / 37


def test_executions_per_step_is_the_default_orders() -> None:
    assert executions_per_step(PER_STEP, SMALL) == (6, 12)


def test_step_variants_are_the_distinct_order_sets_with_their_step_counts() -> None:
    variants = step_variants(PER_STEP, SMALL, 6)
    default = Plan(orders=(("double", (0, 1, 2, 3)), ("single", (0, 7))))
    assert [(plan.orders, n) for plan, n in variants] == [
        ((("double", (3, 2, 1, 0, 0)), ("single", (0, 7))), 1),   # step 0
        (default.orders, 3),                                      # steps 1, 4, 5
        ((("double", (0, 1, 2, 3)), ("single", tuple(range(8)))), 1),  # step 2
        ((("double", ()), ("single", parse_order("[1-3]x2"))), 1),  # step 3
    ]
    assert all(plan.step_orders == () and plan.active_steps is None for plan, _ in variants)


def test_step_variants_merge_sets_that_run_the_same_orders() -> None:
    # active_steps' full-model steps and an identity default are one set; a table equal to the default too.
    plan = Plan(orders=(("single", (0, 7)),), active_steps=(1,))
    assert [n for _, n in step_variants(plan, SMALL, 4)] == [3, 1]
    same = loads('version = 2\n[order]\nsingle = "0, 7"\n[[steps]]\nsteps = "1"\n[steps.order]\nsingle = "0, 7"\n')
    ((only, n),) = step_variants(same, SMALL, 3)
    assert n == 3 and only.order("single") == (0, 7)
