"""The logic behind the TUI's plan-editing keys: skip, middle repeat, reverse, parallel, restore, clear.

Each key acts on a selected range of one stack's blocks. The functions here are pure (immutable Plan in,
new Plan out), so the TUI can push every result on its undo stack, and torch- and textual-free, so they can
be tested without a terminal or a model.

Every operation works on the stack's *current* default order (a plan's step tables are kept as they are:
the grid shows and edits the default order only), so edits compose ("skip 0-2, then reverse 5-9"), and
stores the result in canonical form: an order that comes back to the identity is removed from the plan, so
undoing an edit by hand gives back a plan equal to the untouched one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import (
    MAX_COUNT,
    MAX_EXECUTIONS,
    Cached,
    Group,
    Order,
    Plan,
    Unit,
    executions,
    format_order,
    identity_order,
    parse_order,
)

_LABEL_CAP = 99  # grid cells are narrow: "×99" / "∥99" at most


@dataclass(frozen=True)
class CellState:
    """How one block runs under a plan, for drawing its cell in the layer grid."""

    runs: int  # plain executions of the block per pass
    groups: tuple[int, ...]  # loop counts of the parallel groups that contain it (usually 0 or 1 entries)
    reversed: bool  # it sits inside a descending run of plain blocks (… 12, 11, 10 …)
    cached: tuple[str, ...] = ()  # the modes of the cached spans that hold it ("reuse", "forecast")

    @property
    def skipped(self) -> bool:
        return self.runs == 0 and not self.groups and not self.cached

    def label(self) -> str:
        """A marker of at most 3 characters; when several apply, the one that changes the most wins
        (skipped > parallel > repeated > reversed > cached: ↻ reused, ↗ forecast). A block in several
        groups shows its loops summed: that is how often it runs inside groups."""
        if self.skipped:
            return "–"
        if self.groups:
            loops = sum(self.groups)
            return "∥" if loops == 1 else f"∥{min(loops, _LABEL_CAP)}"
        if self.runs > 1:
            return f"×{min(self.runs, _LABEL_CAP)}"
        if self.reversed:
            return "↺"
        if self.cached:
            return "↗" if "forecast" in self.cached and self.runs == 0 else "↻" if self.runs == 0 else ""
        return ""


# ------------------------------------------------------------------------------------------ operations


def skip(plan: Plan, layout: Layout, stack: str, first: int, last: int) -> Plan:
    """Remove every execution of the range's blocks, plain or inside groups (the "skip" strategy)."""
    first, last = _selection(layout, stack, first, last)
    return _replace_range(plan, layout, stack, first, last, [])


def middle_repeat(plan: Plan, layout: Layout, stack: str, first: int, last: int) -> Plan:
    """Replace the range by its center block run once per block of the range ("10-28" -> "19*19"), so the
    number of executions stays the same (the "middle repeat" strategy)."""
    first, last = _selection(layout, stack, first, last)
    center = (first + last) // 2
    return _replace_range(plan, layout, stack, first, last, [center] * (last - first + 1))


def reverse(plan: Plan, layout: Layout, stack: str, first: int, last: int) -> Plan:
    """Reverse the sequence of the range's plain blocks in place ("10-28" -> "28-10"); groups stay as they
    are. The positions are kept, so reversing twice gives back the original order. A range with no plain
    block in the order leaves the plan unchanged."""
    first, last = _selection(layout, stack, first, last)
    units = list(plan.resolved(layout)[stack])
    positions = [i for i, unit in enumerate(units) if isinstance(unit, int) and first <= unit <= last]
    if not positions:
        return plan
    values = [units[i] for i in positions]
    for position, value in zip(positions, reversed(values)):
        units[position] = value
    return _store(plan, layout, stack, units)


def parallel(plan: Plan, layout: Layout, stack: str, first: int, last: int, loops: int = 1) -> Plan:
    """Run the range's blocks as one parallel group looped `loops` times ("[10-28]x3"). A one-block range is
    that block repeated `loops` times, as the parser reads "[5]x3" (the average of one block is the block).
    Raises ValueError (a PlanError) if the loops would exceed the per-step execution limit."""
    first, last = _selection(layout, stack, first, last)
    if not 1 <= loops <= MAX_COUNT:
        raise ValueError(f"loop count must be in 1..{MAX_COUNT}, got {loops}")
    new: list[Unit] = [first] * loops if first == last else [Group(tuple(range(first, last + 1)), loops)]
    return _replace_range(plan, layout, stack, first, last, new)


def max_loops(plan: Plan, layout: Layout, stack: str, first: int, last: int) -> int:
    """The most loops a looped-parallel group over the range can run in this plan: the grammar's count
    limit, and what the stack's per-step execution limit leaves once the range's blocks are taken out
    (0: not even one)."""
    first, last = _selection(layout, stack, first, last)
    kept, _ = _without(plan.resolved(layout)[stack], first, last)
    room = MAX_EXECUTIONS - executions(tuple(kept))
    return max(0, min(MAX_COUNT, room // (last - first + 1)))


def restore(plan: Plan, layout: Layout, stack: str, first: int, last: int) -> Plan:
    """Make the range's blocks run normally again: each exactly once, ascending, where the range was (or,
    if none of its blocks runs now, before the first unit that comes after it). Undoes any other edit of
    the same range on an untouched stack."""
    first, last = _selection(layout, stack, first, last)
    return _replace_range(plan, layout, stack, first, last, list(range(first, last + 1)))


def cache(plan: Plan, layout: Layout, stack: str, first: int, last: int, mode: str) -> Plan:
    """Run the range as one cached span ("4-11@reuse"): computed on the first step (and on any step whose
    order runs it plainly), its residual reused (`reuse`) or extrapolated (`forecast`) on the others."""
    first, last = _selection(layout, stack, first, last)
    if mode not in ("reuse", "forecast"):
        raise ValueError(f"mode must be reuse or forecast, got {mode!r}")
    return _replace_range(plan, layout, stack, first, last, [Cached(first, last, mode)])


def clear(plan: Plan) -> Plan:
    """Every stack runs unchanged at every step (the default order and the step tables go); the plan's
    name, note, model, sampling and active steps are kept."""
    return replace(plan, orders=(), step_orders=())


def annotate(plan: Plan, layout: Layout, stack: str) -> list[CellState]:
    """One CellState per block of `stack`, in index order. The plan's order must hold only blocks of the
    stack (as `engine/core/plan.py`'s `validate` checks)."""
    blocks = _stack(layout, stack).blocks
    units = plan.resolved(layout)[stack]
    runs = [0] * blocks
    groups: list[list[int]] = [[] for _ in range(blocks)]
    descending = [False] * blocks
    cached: list[list[str]] = [[] for _ in range(blocks)]
    for i, unit in enumerate(units):
        if isinstance(unit, Group):
            for member in unit.members:
                groups[member].append(unit.loops)
            continue
        if isinstance(unit, Cached):
            for member in unit.blocks:
                cached[member].append(unit.mode)
            continue
        runs[unit] += 1
        prev = units[i - 1] if i > 0 else None
        after = units[i + 1] if i + 1 < len(units) else None
        if (isinstance(prev, int) and prev == unit + 1) or (isinstance(after, int) and after == unit - 1):
            descending[unit] = True
    return [CellState(runs[b], tuple(groups[b]), descending[b], tuple(cached[b])) for b in range(blocks)]


# ------------------------------------------------------------------------------------------- internals


def _stack(layout: Layout, stack: str) -> Stack:
    if stack not in layout.names:
        raise ValueError(f"unknown stack '{stack}' (this model has: {', '.join(layout.names)})")
    return layout.stack(stack)


def _selection(layout: Layout, stack: str, first: int, last: int) -> tuple[int, int]:
    """The selected range as (low, high): the TUI's selection may have been dragged either way."""
    s = _stack(layout, stack)
    for index in (first, last):
        if not 0 <= index < s.blocks:
            raise ValueError(f"block {index} out of range for stack '{stack}' ({s.blocks} blocks: 0-{s.last})")
    return min(first, last), max(first, last)


def _without(units: Order, first: int, last: int) -> tuple[list[Unit], int | None]:
    """The units with every occurrence of blocks first..last removed, and the insertion point that the
    removal leaves (None if no unit held such a block).

    A group that keeps two or more members stays a group; one that keeps one member becomes that block
    repeated `loops` times (the same computation); one that keeps none disappears. Where the first unit
    touched survives as such a remnant, the insertion point is before it if the range starts below its
    remaining blocks, else after it, so "parallel 3-4, skip 4, restore 4" gives back "3, 4", not "4, 3".
    """
    kept: list[Unit] = []
    at: int | None = None
    for unit in units:
        members = (unit,) if isinstance(unit, int) else unit.blocks if isinstance(unit, Cached) else unit.members
        rest = tuple(m for m in members if not first <= m <= last)
        if len(rest) == len(members):
            kept.append(unit)
            continue
        remnant: list[Unit] = []
        if isinstance(unit, Cached):  # a cached span cut by the range: what is left of it runs plainly
            remnant = list(rest)
        elif isinstance(unit, Group) and len(rest) >= 2:
            remnant = [Group(rest, unit.loops)]
        elif isinstance(unit, Group) and rest:
            remnant = [rest[0]] * unit.loops
        if at is None:
            if isinstance(unit, Cached):  # the new units go where the cut was: after the blocks below it
                at = len(kept) + sum(1 for b in rest if b < first)
            else:
                at = len(kept) + (len(remnant) if rest and rest[0] < first else 0)
        kept.extend(remnant)
    return kept, at


def _smallest(unit: Unit) -> int:
    return unit if isinstance(unit, int) else unit.first if isinstance(unit, Cached) else unit.members[0]


def _replace_range(plan: Plan, layout: Layout, stack: str, first: int, last: int, new: list[Unit]) -> Plan:
    """Remove the range's blocks from the current order and put `new` where the range was: at the first
    unit that held one of its blocks, else before the first unit that starts after `first` (so "skip, then
    restore" returns to the identity)."""
    kept, at = _without(plan.resolved(layout)[stack], first, last)
    if at is None:
        at = next((i for i, unit in enumerate(kept) if _smallest(unit) > first), len(kept))
    return _store(plan, layout, stack, kept[:at] + new + kept[at:])


def _store(plan: Plan, layout: Layout, stack: str, units: list[Unit]) -> Plan:
    """Store the order in the parser's canonical form (back-to-back copies of a group merged), dropping it
    if it is the identity so that a plan edited back by hand compares equal to the untouched one. Raises
    PlanError (a ValueError) if the order runs more blocks per step than the language allows."""
    order = parse_order(format_order(tuple(units)), f"order.{stack}")
    return plan.with_order(stack, None if order == identity_order(layout.stack(stack).blocks) else order)
