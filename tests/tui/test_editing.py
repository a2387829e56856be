"""Plan-editing operations behind the TUI's keys (tui/editing.py).

Expected orders are written out by hand as order strings or unit lists; the property tests check
invariants with a tiny independent counter of block executions below, never with the module's own
`annotate`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import (
    MAX_COUNT,
    Group,
    Order,
    Plan,
    PlanError,
    Sampling,
    StepTable,
    format_order,
    parse_order,
    validate,
)
from dit_explore.tui.editing import (
    CellState,
    annotate,
    clear,
    middle_repeat,
    parallel,
    restore,
    reverse,
    skip,
)

FLUX = Layout(
    "flux",
    (Stack("double", "transformer_blocks", 19), Stack("single", "single_transformer_blocks", 38)),
)
SD3 = Layout("sd3", (Stack("double", "transformer_blocks", 24, True),))
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Edit = Callable[[Plan, Layout, str, int, int], Plan]
EditSpec = tuple[str, str, int, int, int]  # (operation, stack, first, last, loops)
EDITS: dict[str, Edit] = {
    "skip": skip,
    "middle_repeat": middle_repeat,
    "reverse": reverse,
    "parallel": parallel,
    "restore": restore,
}


def text(plan: Plan, stack: str = "single") -> str | None:
    """The stored order of `stack` as canonical text; None when the stack runs unchanged."""
    order = plan.order(stack)
    return None if order is None else format_order(order)


def with_text(order: str, stack: str = "single") -> Plan:
    return Plan().with_order(stack, parse_order(order))


def counts(order: Order) -> dict[int, tuple[int, int]]:
    """Block -> (plain executions, executions inside groups), counted independently of the module."""
    out: dict[int, tuple[int, int]] = {}
    for unit in order:
        if isinstance(unit, int):
            plain, grouped = out.get(unit, (0, 0))
            out[unit] = (plain + 1, grouped)
        else:
            for m in unit.members:
                plain, grouped = out.get(m, (0, 0))
                out[m] = (plain, grouped + unit.loops)
    return out


# -------------------------------------------------------------------------------- the five strategies


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: skip(p, FLUX, "single", 10, 28), "0-9, 29-37"),
        (lambda p: middle_repeat(p, FLUX, "single", 10, 28), "0-9, 19*19, 29-37"),
        (lambda p: reverse(p, FLUX, "single", 10, 28), "0-9, 28-10, 29-37"),
        (lambda p: parallel(p, FLUX, "single", 10, 28), "0-9, [10-28], 29-37"),
        (lambda p: parallel(p, FLUX, "single", 10, 28, loops=3), "0-9, [10-28]x3, 29-37"),
    ],
    ids=["skip", "middle_repeat", "reverse", "parallel", "looped_parallel"],
)
def test_the_studys_five_strategies(edit: Callable[[Plan], Plan], expected: str) -> None:
    plan = edit(Plan())
    assert text(plan) == expected
    assert plan.order("double") is None  # the other stack is left alone
    validate(plan, FLUX)


def test_unit_lists_of_the_strategies() -> None:
    assert parallel(Plan(), FLUX, "double", 2, 4, loops=2).order("double") == (
        0, 1, Group((2, 3, 4), 2), *range(5, 19)
    )
    assert middle_repeat(Plan(), FLUX, "double", 3, 6).order("double") == (0, 1, 2, 4, 4, 4, 4, *range(7, 19))


def test_middle_repeat_of_an_even_range_takes_the_lower_center() -> None:
    assert text(middle_repeat(Plan(), FLUX, "single", 10, 13)) == "0-9, 11*4, 14-37"


def test_reversed_selection_is_the_same_range() -> None:
    for name, edit in EDITS.items():
        assert edit(Plan(), FLUX, "single", 28, 10) == edit(Plan(), FLUX, "single", 10, 28), name


def test_one_block_parallel_is_the_block_repeated() -> None:
    assert text(parallel(Plan(), FLUX, "single", 5, 5, loops=3)) == "0-4, 5*3, 6-37"
    assert parallel(Plan(), FLUX, "single", 5, 5, loops=3).order("single") == parse_order("0-4, [5]x3, 6-37")
    assert parallel(Plan(), FLUX, "single", 5, 5) == Plan()  # [5] is block 5 once: the identity


def test_operations_never_mutate_their_input() -> None:
    plan = with_text("0-9, [10-12], 13-37").with_order("double", parse_order("3-0"))
    snapshot = (plan.orders, plan.name)
    for edit in EDITS.values():
        edit(plan, FLUX, "single", 5, 11)
    clear(plan)
    assert (plan.orders, plan.name) == snapshot


# ------------------------------------------------------------------------------------------ compositions


def test_skip_then_reverse() -> None:
    plan = reverse(skip(Plan(), FLUX, "single", 0, 2), FLUX, "single", 5, 9)
    assert text(plan) == "3-4, 9-5, 10-37"


def test_parallel_then_skip_a_member() -> None:
    plan = skip(parallel(Plan(), FLUX, "single", 10, 14), FLUX, "single", 12, 12)
    assert text(plan) == "0-9, [10-11,13-14], 15-37"
    assert plan.order("single") == (*range(10), Group((10, 11, 13, 14), 1), *range(15, 38))


def test_a_group_left_with_one_member_is_that_block_repeated_loops_times() -> None:
    assert text(skip(parallel(Plan(), FLUX, "single", 3, 4), FLUX, "single", 4, 4)) == "0-3, 5-37"
    assert text(skip(parallel(Plan(), FLUX, "single", 3, 4, 3), FLUX, "single", 4, 4)) == "0-2, 3*3, 5-37"


def test_a_group_left_with_no_member_disappears() -> None:
    assert text(skip(parallel(Plan(), FLUX, "single", 3, 6, 2), FLUX, "single", 0, 8)) == "9-37"


def test_parallel_then_middle_repeat_over_part_of_the_group() -> None:
    plan = middle_repeat(parallel(Plan(), FLUX, "single", 10, 28), FLUX, "single", 5, 12)
    assert text(plan) == "0-4, 8*8, [13-28], 29-37"


def test_overlapping_parallel_groups_split_the_older_one() -> None:
    plan = parallel(parallel(Plan(), FLUX, "single", 10, 14, 2), FLUX, "single", 12, 16)
    assert text(plan) == "0-9, [10-11]x2, [12-16], 17-37"  # the range starts inside the remnant: after it
    plan = parallel(parallel(Plan(), FLUX, "single", 12, 16), FLUX, "single", 10, 14)
    assert text(plan) == "0-9, [10-14], [15-16], 17-37"


def test_reverse_leaves_groups_in_place() -> None:
    plan = reverse(parallel(Plan(), FLUX, "single", 5, 6), FLUX, "single", 3, 8)
    assert text(plan) == "0-2, 8-7, [5-6], 4-3, 9-37"


def test_back_to_back_copies_of_a_group_merge_like_the_parser() -> None:
    plan = with_text("0, [1,3], 2, [1,3], 4-37")
    assert text(skip(plan, FLUX, "single", 2, 2)) == "0, [1,3]x2, 4-37"


def test_the_execution_limit_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"order\.single: too many block executions per step \(at most 10000\) "
                                        r"at .1000. \(column 8\)"):
        parallel(Plan(), FLUX, "single", 0, 37, loops=MAX_COUNT)


# --------------------------------------------------------------------------------------------- restore


@pytest.mark.parametrize("stack", ["double", "single"])
@pytest.mark.parametrize("name", ["skip", "middle_repeat", "reverse", "parallel"])
def test_restore_after_each_operation_is_the_identity(name: str, stack: str) -> None:
    edited = EDITS[name](Plan(), FLUX, stack, 3, 11)
    assert edited != Plan()
    assert restore(edited, FLUX, stack, 3, 11) == Plan()
    assert restore(edited, FLUX, stack, 11, 3) == Plan()


def test_restore_after_looped_parallel_and_at_the_stack_ends() -> None:
    assert restore(parallel(Plan(), FLUX, "single", 10, 28, 3), FLUX, "single", 10, 28) == Plan()
    assert restore(skip(Plan(), FLUX, "single", 30, 37), FLUX, "single", 30, 37) == Plan()
    assert restore(skip(Plan(), FLUX, "single", 0, 4), FLUX, "single", 0, 4) == Plan()
    assert restore(skip(Plan(), FLUX, "single", 0, 37), FLUX, "single", 0, 37) == Plan()


def test_skip_everything_stores_an_empty_order() -> None:
    assert skip(Plan(), FLUX, "double", 0, 18).order("double") == ()


def test_restore_part_of_a_range() -> None:
    assert text(restore(skip(Plan(), FLUX, "single", 10, 28), FLUX, "single", 15, 19)) == "0-9, 15-19, 29-37"
    reversed_plan = reverse(Plan(), FLUX, "single", 10, 28)
    assert text(restore(reversed_plan, FLUX, "single", 15, 19)) == "0-9, 28-20, 15-19, 14-10, 29-37"
    grouped = parallel(Plan(), FLUX, "single", 10, 28)
    assert text(restore(grouped, FLUX, "single", 10, 14)) == "0-14, [15-28], 29-37"
    assert text(restore(grouped, FLUX, "single", 24, 28)) == "0-9, [10-23], 24-37"
    repeated = middle_repeat(Plan(), FLUX, "single", 10, 28)
    assert text(restore(repeated, FLUX, "single", 19, 19)) == "0-9, 19, 29-37"


def test_restore_a_block_split_off_a_group_goes_after_the_remnant() -> None:
    split = skip(parallel(Plan(), FLUX, "single", 3, 4), FLUX, "single", 4, 4)
    assert restore(split, FLUX, "single", 4, 4) == Plan()


def test_restore_a_block_missing_from_a_group_goes_before_the_next_higher_unit() -> None:
    holed = skip(parallel(Plan(), FLUX, "single", 10, 14), FLUX, "single", 12, 12)
    assert text(restore(holed, FLUX, "single", 12, 12)) == "0-9, [10-11,13-14], 12, 15-37"


# --------------------------------------------------------------------------------------------- reverse


def test_reverse_twice_is_the_original() -> None:
    once = reverse(Plan(), FLUX, "single", 10, 28)
    assert reverse(once, FLUX, "single", 10, 28) == Plan()
    plan = with_text("3-4, 9-5, 10-37").with_order("double", parse_order("0, 1*3, [2-4]x2, 5-18"))
    assert reverse(reverse(plan, FLUX, "single", 0, 37), FLUX, "single", 0, 37) == plan
    assert reverse(reverse(plan, FLUX, "double", 0, 18), FLUX, "double", 0, 18) == plan


def test_reverse_with_no_plain_block_in_range_returns_the_plan_unchanged() -> None:
    skipped = skip(Plan(), FLUX, "single", 10, 28)
    assert reverse(skipped, FLUX, "single", 12, 15) is skipped
    grouped = parallel(Plan(), FLUX, "single", 10, 28)
    assert reverse(grouped, FLUX, "single", 12, 15) is grouped


def test_reverse_of_repeats_keeps_the_repeat_counts_in_place() -> None:
    assert text(reverse(with_text("0, 1*3, 2-37"), FLUX, "single", 0, 2)) == "2, 1*3, 0, 3-37"


# ------------------------------------------------------------------------------------------------ SD3


def test_sd3_edits_of_the_pre_only_last_block() -> None:
    """Edits may move SD3's block 23 where it cannot run; the TUI shows validate's message for those."""
    valid = {
        "skip 23": (skip(Plan(), SD3, "double", 23, 23), "0-22"),
        "middle_repeat 22-23": (middle_repeat(Plan(), SD3, "double", 22, 23), "0-21, 22*2"),
        "middle_repeat 20-23": (middle_repeat(Plan(), SD3, "double", 20, 23), "0-19, 21*4"),
        "reverse 20-22": (reverse(Plan(), SD3, "double", 20, 22), "0-19, 22-20, 23"),
        "skip 23 after reverse 20-23": (
            skip(reverse(Plan(), SD3, "double", 20, 23), SD3, "double", 23, 23), "0-19, 22-20"
        ),
    }
    for name, (plan, expected) in valid.items():
        assert text(plan, "double") == expected, name
        validate(plan, SD3)

    reversed_plan = reverse(Plan(), SD3, "double", 20, 23)
    invalid = {
        "reverse 20-23": (reversed_plan, "0-19, 23-20", "not followed by other blocks"),
        "parallel 22-23": (parallel(Plan(), SD3, "double", 22, 23), "0-21, [22-23]", "not inside a parallel group"),
        "parallel 23 x2": (parallel(Plan(), SD3, "double", 23, 23, 2), "0-22, 23*2", "not repeated"),
        # restoring 23 alone puts it back where it stood, still before 22-20
        "restore 23 after reverse 20-23": (
            restore(reversed_plan, SD3, "double", 23, 23), "0-19, 23-20", "not followed"
        ),
    }
    for name, (plan, expected, why) in invalid.items():
        assert text(plan, "double") == expected, name
        with pytest.raises(PlanError, match=why):
            validate(plan, SD3)
    assert restore(reversed_plan, SD3, "double", 20, 23) == Plan()


# --------------------------------------------------------------------------------------------- clear


def test_clear_removes_every_order_and_keeps_the_rest() -> None:
    plan = Plan(
        orders=(("double", parse_order("0-9")), ("single", parse_order("28-10"))),
        active_steps=(0, 1),
        model="flux-schnell",
        name="painters",
        note="reverse the middle",
        sampling=Sampling(prompt="a fox", seed=7, steps=4),
    )
    assert clear(plan) == Plan(
        active_steps=(0, 1),
        model="flux-schnell",
        name="painters",
        note="reverse the middle",
        sampling=Sampling(prompt="a fox", seed=7, steps=4),
    )
    assert clear(Plan()) == Plan()


def test_edits_change_the_default_order_and_clear_removes_the_step_tables() -> None:
    tables = (StepTable((0, 1), (("single", parse_order("0-37")),)), StepTable((3,)))
    plan = Plan(orders=(("single", parse_order("0-9, 29-37")),), name="per step", step_orders=tables)
    edited = reverse(plan, FLUX, "double", 0, 18)
    assert edited.orders == (("double", parse_order("18-0")), ("single", parse_order("0-9, 29-37")))
    assert edited.step_orders == tables
    skipped = skip(plan, FLUX, "single", 0, 9)  # on the default order: its 0-9 go, the tables keep theirs
    assert skipped.order("single") == parse_order("29-37") and skipped.step_orders == tables
    assert clear(edited) == Plan(name="per step")


# -------------------------------------------------------------------------------------------- annotate

TWELVE = Layout("test", (Stack("s", "blocks", 12),))


def test_annotate_a_plan_with_every_operation() -> None:
    plan = Plan().with_order("s", parse_order("0, 1*3, 5-2, [6-8]x2, 10"))
    normal = CellState(1, (), False)
    backwards = CellState(1, (), True)
    gone = CellState(0, (), False)
    looped = CellState(0, (2,), False)
    expected = [normal, CellState(3, (), False), backwards, backwards, backwards, backwards,
                looped, looped, looped, gone, normal, gone]
    cells = annotate(plan, TWELVE, "s")
    assert cells == expected
    assert [c.label() for c in cells] == ["", "×3", "↺", "↺", "↺", "↺", "∥2", "∥2", "∥2", "–", "", "–"]
    assert [c.skipped for c in cells] == [False] * 9 + [True, False, True]


def test_annotate_the_identity_and_the_reverse_strategy() -> None:
    assert annotate(Plan(), FLUX, "double") == [CellState(1, (), False)] * 19
    cells = annotate(reverse(Plan(), FLUX, "single", 10, 28), FLUX, "single")
    assert [b for b, c in enumerate(cells) if c.reversed] == list(range(10, 29))  # not 9 ("9, 28") nor 29


def test_annotate_only_adjacent_plain_units_make_a_descending_step() -> None:
    plan = Plan().with_order("s", parse_order("0, 3, [1-2], 2, 1, 4-11"))
    cells = annotate(plan, TWELVE, "s")
    assert [c.reversed for c in cells[:5]] == [False, True, True, False, False]  # 3 is next to the group
    assert cells[1] == CellState(1, (1,), True) and cells[1].label() == "∥"


@pytest.mark.parametrize(
    ("cell", "label"),
    [
        (CellState(1, (), False), ""),
        (CellState(2, (), False), "×2"),
        (CellState(19, (), False), "×19"),
        (CellState(120, (), False), "×99"),
        (CellState(0, (1,), False), "∥"),
        (CellState(0, (3,), False), "∥3"),
        (CellState(0, (150,), False), "∥99"),
        (CellState(0, (1, 1), False), "∥2"),  # in two groups: runs twice inside groups
        (CellState(0, (), False), "–"),
        (CellState(0, (), True), "–"),
        (CellState(2, (1,), True), "∥"),  # group beats repeat and reversed
        (CellState(2, (), True), "×2"),  # repeat beats reversed
        (CellState(1, (), True), "↺"),
    ],
)
def test_labels(cell: CellState, label: str) -> None:
    assert cell.label() == label
    assert len(cell.label()) <= 3


# ------------------------------------------------------------------------------------------------ errors


def test_errors_are_one_line_value_errors() -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: skip(Plan(), FLUX, "triple", 0, 1), "unknown stack 'triple' .*double, single"),
        (lambda: annotate(Plan(), FLUX, "triple"), "unknown stack 'triple'"),
        (lambda: reverse(Plan(), FLUX, "single", 0, 38), "block 38 out of range .*0-37"),
        (lambda: restore(Plan(), FLUX, "double", -1, 3), "block -1 out of range .*0-18"),
        (lambda: middle_repeat(Plan(), FLUX, "double", 19, 19), "block 19 out of range"),
        (lambda: parallel(Plan(), FLUX, "single", 0, 3, loops=0), f"loop count must be in 1..{MAX_COUNT}"),
        (lambda: parallel(Plan(), FLUX, "single", 0, 3, loops=MAX_COUNT + 1), "loop count"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------------------- properties


@st.composite
def edits(draw: st.DrawFn) -> EditSpec:
    stack = draw(st.sampled_from(FLUX.stacks))
    first = draw(st.integers(0, stack.last))
    last = draw(st.integers(0, stack.last))
    return draw(st.sampled_from(sorted(EDITS))), stack.name, first, last, draw(st.integers(1, 4))


def apply(plan: Plan, edit: EditSpec) -> Plan:
    name, stack, first, last, loops = edit
    if name == "parallel":
        return parallel(plan, FLUX, stack, first, last, loops)
    return EDITS[name](plan, FLUX, stack, first, last)


@FAST
@given(st.lists(edits(), max_size=8))
def test_any_edit_sequence_stays_valid_and_restores_to_the_untouched_plan(sequence: list[EditSpec]) -> None:
    plan = Plan()
    for edit in sequence:
        plan = apply(plan, edit)
        validate(plan, FLUX)
        for stack, order in plan.orders:
            assert parse_order(format_order(order)) == order
            assert order != tuple(range(FLUX.stack(stack).blocks))  # the identity is never stored
    for stack in FLUX.stacks:
        plan = restore(plan, FLUX, stack.name, 0, stack.last)
    assert plan == Plan()


@FAST
@given(st.lists(edits(), max_size=6), edits())
def test_each_edit_changes_exactly_its_range(history: list[EditSpec], edit: EditSpec) -> None:
    before = Plan()
    for past in history:
        before = apply(before, past)
    after = apply(before, edit)
    name, stack, a, b, loops = edit
    first, last = min(a, b), max(a, b)
    old = counts(before.resolved(FLUX)[stack])
    new = counts(after.resolved(FLUX)[stack])
    for block in range(FLUX.stack(stack).blocks):
        got = new.get(block, (0, 0))
        if name == "reverse":
            assert got == old.get(block, (0, 0)), block  # only permutes plain blocks
        elif not first <= block <= last:  # the same executions; a group's last member may turn plain
            assert sum(got) == sum(old.get(block, (0, 0))), block
        elif name == "skip":
            assert got == (0, 0)
        elif name == "middle_repeat":
            assert got == ((last - first + 1, 0) if block == (first + last) // 2 else (0, 0))
        elif name == "parallel":
            assert got == ((loops, 0) if first == last else (0, loops))
        else:
            assert got == (1, 0)
    cells = annotate(after, FLUX, stack)
    assert [(c.runs, sum(c.groups)) for c in cells] == [new.get(b, (0, 0)) for b in range(len(cells))]
    other = next(s.name for s in FLUX.stacks if s.name != stack)
    assert after.order(other) == before.order(other)


@FAST
@given(st.lists(edits(), max_size=6), edits())
def test_undo_by_hand(history: list[EditSpec], edit: EditSpec) -> None:
    """From the untouched plan, any one edit is undone by restoring its range; any reversal by repeating it."""
    _, stack, first, last, _ = edit
    assert restore(apply(Plan(), edit), FLUX, stack, first, last) == Plan()
    plan = Plan()
    for past in history:
        plan = apply(plan, past)
    assert reverse(reverse(plan, FLUX, stack, first, last), FLUX, stack, first, last) == plan
