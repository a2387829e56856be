"""The plan as a step × block map: what each block does on each denoising step, and the plan edits applied
to a range of steps. Pure (immutable Plan in, new Plan out) and torch- and textual-free, like editing.py.

A cell is one block on one step: `run` (computed once), `skip`, `repeat` (more than once), `parallel` (in a
parallel group), `reverse` (in a descending run), `reuse` / `forecast` (a cached span taking its
residual from an earlier step). On the run's first step a cached span computes, so its blocks show `run`
there.

An edit on a range of steps applies the grid's edit (editing.py: skip, middle repeat, reverse, parallel,
restore, cache) to the orders each of those steps runs, and stores the result as `[[steps]]` tables: the
default order stays what the steps outside any table run; every step whose orders then differ from it
gets a table, steps with the same orders sharing one. A plan with `active_steps` becomes tables too
(active_steps and tables cannot be combined): the steps it left out run the full model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import (
    MAX_STEP_TABLES,
    Order,
    Plan,
    PlanError,
    StepTable,
    computing,
    identity_order,
)
from dit_explore.tui.editing import CellState, annotate

STATES = ("run", "skip", "repeat", "parallel", "reverse", "reuse", "forecast")


def cell_state(state: CellState) -> str:
    """One of STATES for a block's CellState (the grid's precedence: skip > parallel > repeat > reverse >
    cached)."""
    if state.skipped:
        return "skip"
    if state.groups:
        return "parallel"
    if state.runs > 1:
        return "repeat"
    if state.reversed:
        return "reverse"
    if state.cached and state.runs == 0:
        return "forecast" if "forecast" in state.cached else "reuse"
    return "run"


def orders_at(plan: Plan, layout: Layout, step: int) -> dict[str, Order]:
    """Every stack's order at `step` as it runs: cached spans computed on the first step."""
    orders = plan.resolved_at(layout, step)
    if step == 0:
        orders = {name: computing(order) for name, order in orders.items()}
    return orders


def step_map(plan: Plan, layout: Layout, steps: int) -> list[dict[str, list[str]]]:
    """For each step, each stack's blocks as STATES."""
    out: list[dict[str, list[str]]] = []
    memo: dict[tuple[Order, ...], dict[str, list[str]]] = {}
    for step in range(steps):
        orders = orders_at(plan, layout, step)
        key = tuple(orders[s.name] for s in layout.stacks)
        if key not in memo:
            one = Plan(orders=tuple(sorted(orders.items())))
            memo[key] = {s.name: [cell_state(c) for c in annotate(one, layout, s.name)] for s in layout.stacks}
        out.append(memo[key])
    return out


Edit = Callable[..., Plan]  # editing.skip and the others: (plan, layout, stack, first, last, **options) -> Plan


def edit_steps(plan: Plan, layout: Layout, steps: Iterable[int], total: int, edit: Edit, stack: str, first: int,
               last: int, **options: Any) -> Plan:
    """`edit` applied to blocks first..last of `stack` on each of `steps` (0-based, below `total`, the run's
    step count), the other steps unchanged (see the module). Raises ValueError (a PlanError) if the
    result needs more than MAX_STEP_TABLES tables or the edit itself refuses."""
    chosen = sorted(set(steps))
    if not chosen:
        return plan
    if chosen[0] < 0 or chosen[-1] >= total:
        raise ValueError(f"steps must be in 0-{total - 1}, got {chosen[0]}-{chosen[-1]}")
    universe = sorted(set(range(total)) | {s for t in plan.step_orders for s in t.steps})
    written = {step: plan.resolved_at(layout, step) for step in universe}  # as written (cached spans kept)
    edited: dict[tuple[Order, ...], dict[str, Order]] = {}
    for step in chosen:
        orders = written[step]
        key = tuple(orders[s.name] for s in layout.stacks)
        if key not in edited:
            one = Plan(orders=tuple(sorted(orders.items())))
            edited[key] = edit(one, layout, stack, first, last, **options).resolved(layout)
        written[step] = edited[key]
    return _as_tables(replace(plan, active_steps=None), layout, written)


def _as_tables(plan: Plan, layout: Layout, written: dict[int, dict[str, Order]]) -> Plan:
    """`plan` with its default order and step tables giving each step exactly the orders in `written`."""
    default = plan.resolved(layout)
    identity = {s.name: identity_order(s.blocks) for s in layout.stacks}
    groups: dict[tuple[tuple[str, Order], ...], list[int]] = {}
    for step, orders in sorted(written.items()):
        if orders == default:
            continue
        if orders == identity:
            key: tuple[tuple[str, Order], ...] = ()  # a table naming no stack: the full model
        else:
            key = tuple(sorted((name, order) for name, order in orders.items() if order != default[name]))
        groups.setdefault(key, []).append(step)
    if len(groups) > MAX_STEP_TABLES:
        raise PlanError([f"this edit needs {len(groups)} [[steps]] tables; a plan has at most {MAX_STEP_TABLES}"])
    tables = tuple(sorted((StepTable(tuple(s), k) for k, s in groups.items()), key=lambda t: t.steps[0]))
    return replace(plan, step_orders=tables)
