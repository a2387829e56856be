"""The plan language (engine/core/plan.py): grammar, canonical form, plan files, validation.

Expected execution sequences are written out by hand, or computed by a tiny independent expander below
from the same structured description that produced the text (never with plan.py). Sequences are compared
as lists of ints and ("group", members, loops) tuples.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dit_explore.engine.core.plan as plan_mod
from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import (
    MAX_COUNT,
    MAX_EXECUTIONS,
    PNG_PLAN_KEY,
    Branch,
    Group,
    Plan,
    PlanError,
    Sampling,
    StepTable,
    blocks_in,
    dumps,
    executions,
    format_order,
    format_steps,
    format_unit,
    identity_order,
    load,
    loads,
    parse_order,
    parse_steps,
    save,
    validate,
    validate_steps,
)

FLUX = Layout("flux", (Stack("double", "transformer_blocks", 19), Stack("single", "single_transformer_blocks", 38)))
SD3 = Layout("sd3", (Stack("double", "transformer_blocks", 24, pre_only_last=True),))

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------- helpers


def g(members: Any, loops: int = 1) -> tuple[str, tuple[int, ...], int]:
    """The expected form of a parallel group."""
    return ("group", tuple(members), loops)


def as_seq(order: tuple[Any, ...]) -> list[Any]:
    """An Order in the comparison form: ints stay, groups become ("group", members, loops)."""
    out: list[Any] = []
    for unit in order:
        if isinstance(unit, Group):
            out.append(("group", tuple(unit.members), unit.loops))
        else:
            assert type(unit) is int, unit
            out.append(unit)
    return out


def merge_groups(seq: list[Any]) -> list[Any]:
    """Independent normalizer: back-to-back groups with the same members become one looped group."""
    out: list[Any] = []
    for unit in seq:
        if isinstance(unit, tuple) and out and isinstance(out[-1], tuple) and out[-1][1] == unit[1]:
            out[-1] = ("group", unit[1], out[-1][2] + unit[2])
        else:
            out.append(unit)
    return out


def to_order(seq: list[Any]) -> tuple[Any, ...]:
    return tuple(Group(u[1], u[2]) if isinstance(u, tuple) else u for u in seq)


def span(a: int, b: int) -> list[int]:
    return list(range(a, b + 1)) if b >= a else list(range(a, b - 1, -1))


def problems_of(exc: pytest.ExceptionInfo[PlanError]) -> list[str]:
    lines = str(exc.value).split("\n")
    assert lines == exc.value.problems
    return lines


# ------------------------------------------------------------------------------- parsing, by hand

HAND_PARSED = [
    ("", []),
    ("   \t\n ", []),
    ("7", [7]),
    ("007", [7]),
    ("0-3", [0, 1, 2, 3]),
    ("28-25", [28, 27, 26, 25]),
    ("4-4", [4]),
    ("15*19", [15] * 19),
    ("3-5*2", [3, 4, 5, 3, 4, 5]),
    ("5-3*2", [5, 4, 3, 5, 4, 3]),
    ("0-2,7-9", [0, 1, 2, 7, 8, 9]),
    ("5,5", [5, 5]),
    ("1,2*2,1", [1, 2, 2, 1]),
    ("[10-12]", [g((10, 11, 12))]),
    ("[12-10]x3", [g((10, 11, 12), 3)]),
    ("[3,1,2]", [g((1, 2, 3))]),
    ("[9,1-2]x1", [g((1, 2, 9))]),
    ("[5]x3", [5, 5, 5]),
    ("[5]", [5]),
    ("[7-7]x2", [7, 7]),
    ("[1-3]x2,[1-3]x2", [g((1, 2, 3), 4)]),
    ("[1-3],[1-3]x2,[3-1]", [g((1, 2, 3), 4)]),
    ("[1,2],[2,1]", [g((1, 2), 2)]),
    ("[1,2],3,[1,2]", [g((1, 2)), 3, g((1, 2))]),
    ("[1,2],[1,3]", [g((1, 2)), g((1, 3))]),
    ("[1,2],[5]x2,[1,2]", [g((1, 2)), 5, 5, g((1, 2))]),
    ("0-9, [10-28]x3, 29-37", list(range(10)) + [g(range(10, 29), 3)] + list(range(29, 38))),
    ("0-9,20-37", list(range(10)) + list(range(20, 38))),
    ("28-10", list(range(28, 9, -1))),
    (" 1 , 2 *3 ,\t[ 4 - 6 ] x 2\n", [1, 2, 2, 2, g((4, 5, 6), 2)]),
    ("[0-1]x1000", [g((0, 1), 1000)]),
    ("3*1000", [3] * 1000),
]


@pytest.mark.parametrize(("text", "expected"), HAND_PARSED)
def test_parse_order_matches_hand_expansion(text: str, expected: list[Any]) -> None:
    assert as_seq(parse_order(text)) == expected


def test_one_member_group_is_the_same_order_as_a_repeat() -> None:
    assert parse_order("[5]x3") == parse_order("5*3") == (5, 5, 5)
    assert parse_order("[1-3]x2,[1-3]x2") == parse_order("[1-3]x4")


def test_group_members_are_stored_sorted_and_distinct() -> None:
    (unit,) = parse_order("[20-18, 3, 11]x2")
    assert unit == Group((3, 11, 18, 19, 20), 2)


PARSE_ERRORS = [
    # (text, a fragment naming the offending token)
    ("1,,2", "',' (column 3)"),
    ("1,", "end of text"),
    ("1-", "end of text"),
    ("-1", "'-' (column 1)"),
    ("[1,2", "end of text"),
    ("[1,2]]", "']' (column 6)"),
    ("[]", "']'"),
    ("[1-3,2]", "block 2 appears twice"),
    ("[1,1]", "block 1 appears twice"),
    ("3*0", "'0'"),
    ("[1,2]x0", "'0'"),
    ("3*1001", "'1001'"),
    ("[1,2]x1001", "'1001'"),
    ("3x2", "'x'"),
    ("[1,2]*2", "'*'"),
    ("1*", "end of text"),
    ("*3", "'*'"),
    ("1 2", "'2' (column 3)"),
    ("a", "'a'"),
    ("1;2", "';'"),
    ("\u0661", "'\u0661'"),  # ARABIC-INDIC DIGIT ONE: a digit, but not ours
    ("1.5", "'.'"),
    ("[0-10]x1000", f"at most {MAX_EXECUTIONS}"),
    ("0-37*1000", f"at most {MAX_EXECUTIONS}"),
]


@pytest.mark.parametrize(("text", "fragment"), PARSE_ERRORS)
def test_parse_order_errors_name_where_and_token(text: str, fragment: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_order(text, "p.toml: order.single")
    (line,) = problems_of(exc)
    assert line.startswith("p.toml: order.single: ")
    assert fragment in line


def test_count_limits_are_inclusive() -> None:
    assert len(parse_order(f"4*{MAX_COUNT}")) == MAX_COUNT
    assert parse_order(f"[0-9]x{MAX_COUNT}") == (Group(tuple(range(10)), MAX_COUNT),)
    assert executions(parse_order(f"[0-9]x{MAX_COUNT}")) == MAX_EXECUTIONS == 10 * MAX_COUNT


@FAST
@given(st.text(alphabet="0123456789,-*[]x \tab;", max_size=30))
def test_parse_order_rejects_only_with_plan_error(text: str) -> None:
    try:
        order = parse_order(text, "W")
    except PlanError as exc:
        assert exc.problems and all(line.startswith("W: ") for line in exc.problems)
    else:
        assert parse_order(format_order(order)) == order


# ----------------------------------------------------------------------------- canonical printing

CANONICAL = [
    ("0,1,2,3", "0-3"),
    ("3,2,1", "3-1"),
    ("0, 2, 4", "0, 2, 4"),
    ("15*19", "15*19"),
    ("15,15", "15*2"),
    ("13,14,14,14", "13, 14*3"),
    ("1,2,3,3", "1-2, 3*2"),
    ("3,4,5,3,4,5", "3-5*2"),
    ("4,3,4,3", "4-3*2"),
    ("1,2,1,2,2", "1-2, 1, 2*2"),
    ("0-9,[10-28]x3,29-37", "0-9, [10-28]x3, 29-37"),
    ("[1,2,3,5]", "[1-3,5]"),
    ("[1,2]x1", "[1-2]"),
    ("[1,3]x2", "[1,3]x2"),
    ("[5]x3", "5*3"),
    ("1,2,[4,5],1,2", "1-2, [4-5], 1-2"),
    ("[4,5],[4,5]", "[4-5]x2"),
    ("", ""),
    ("0-9,20-37", "0-9, 20-37"),
    ("28-10", "28-10"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_format_order_canonical_text(text: str, canonical: str) -> None:
    order = parse_order(text)
    assert format_order(order) == canonical
    assert parse_order(canonical) == order


def test_format_unit() -> None:
    assert format_unit(7) == "7"
    assert format_unit(Group((1, 2, 3, 7), 1)) == "[1-3,7]"
    assert format_unit(Group((0, 2), 5)) == "[0,2]x5"


# --------------------------------------------------------------------- hypothesis: units -> text

_group = st.builds(
    lambda ms, loops: Group(tuple(sorted(ms)), loops),
    st.lists(st.integers(0, 40), unique=True, min_size=2, max_size=6),
    st.integers(1, 20),
)
_chunk = st.one_of(
    st.integers(0, 40).map(lambda i: [i]),
    st.builds(lambda a, n, up: span(a, a + n if up else max(0, a - n)), st.integers(0, 40), st.integers(1, 8), st.booleans()),
    st.builds(lambda i, k: [i] * k, st.integers(0, 40), st.integers(2, 5)),
    st.builds(lambda a, n, k: span(a, a + n) * k, st.integers(0, 30), st.integers(1, 4), st.integers(2, 3)),
    _group.map(lambda grp: [grp]),
)
unit_orders = st.lists(_chunk, max_size=12).map(
    lambda chunks: to_order(merge_groups(as_seq(tuple(u for c in chunks for u in c))))
)

_ITEM = r"(\d+(-\d+)?(\*\d+)?|\[\d+(-\d+)?(,\d+(-\d+)?)*\](x\d+)?)"
_CANONICAL_RE = re.compile(rf"^({_ITEM}(, {_ITEM})*)?$")


@FAST
@given(unit_orders)
def test_format_then_parse_round_trips_unit_orders(order: tuple[Any, ...]) -> None:
    text = format_order(order)
    assert _CANONICAL_RE.match(text), text
    assert "x1," not in text + "," and "*1," not in text + ","  # counts of one are omitted
    assert parse_order(text) == order
    assert format_order(parse_order(text)) == text  # idempotent


# ---------------------------------------------------------------------- hypothesis: text -> units


@st.composite
def order_texts(draw: st.DrawFn) -> tuple[str, list[Any]]:
    """Random text in the grammar, with the units it must parse to (computed here, not by plan.py)."""
    items: list[list[str]] = []
    expected: list[Any] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            a = draw(st.integers(0, 40))
            b = draw(st.one_of(st.none(), st.integers(max(0, a - 10), a + 10)))
            times = draw(st.one_of(st.none(), st.integers(1, 4)))
            tokens = [str(a)] if b is None else [str(a), "-", str(b)]
            blocks = [a] if b is None else span(a, b)
            if times is not None:
                tokens += ["*", str(times)]
            expected += blocks * (times or 1)
        else:
            members = sorted(draw(st.lists(st.integers(0, 30), unique=True, min_size=1, max_size=7)))
            runs: list[list[int]] = []
            for m in members:
                if runs and runs[-1][-1] == m - 1:
                    runs[-1].append(m)
                else:
                    runs.append([m])
            pieces: list[list[str]] = []
            for run in runs:
                how = draw(st.sampled_from(["up", "down", "singles"])) if len(run) > 1 else "singles"
                if how == "up":
                    pieces.append([str(run[0]), "-", str(run[-1])])
                elif how == "down":
                    pieces.append([str(run[-1]), "-", str(run[0])])
                else:
                    pieces += [[str(m)] for m in run]
            pieces = list(draw(st.permutations(pieces)))
            loops = draw(st.one_of(st.none(), st.integers(1, 4)))
            tokens = ["["]
            for i, piece in enumerate(pieces):
                tokens += ([","] if i else []) + piece
            tokens.append("]")
            if loops is not None:
                tokens += ["x", str(loops)]
            if len(members) == 1:
                expected += [members[0]] * (loops or 1)
            else:
                expected.append(("group", tuple(members), loops or 1))
        items.append(tokens)
    flat: list[str] = []
    for i, tokens in enumerate(items):
        flat += ([","] if i else []) + tokens
    gaps = draw(st.lists(st.sampled_from(["", "", " ", "  ", "\t", "\n"]), min_size=len(flat) + 1, max_size=len(flat) + 1))
    text = gaps[0] + "".join(tok + gap for tok, gap in zip(flat, gaps[1:]))
    return text, merge_groups(expected)


@FAST
@given(order_texts())
def test_parse_random_text_matches_independent_expander(case: tuple[str, list[Any]]) -> None:
    text, expected = case
    order = parse_order(text)
    assert as_seq(order) == expected
    canonical = format_order(order)
    assert parse_order(canonical) == order
    assert format_order(parse_order(canonical)) == canonical
    assert executions(order) == sum(1 if isinstance(u, int) else len(u[1]) * u[2] for u in expected)


# ------------------------------------------------------------------------------ executions & friends


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("0-37", 38),
        ("15*19", 19),
        ("0-9, [10-28]x3, 29-37", 10 + 19 * 3 + 9),
        ("[10-28]", 19),
        ("[1,2],[1,2]x2", 6),
        ("[5]x4", 4),
        ("0-9,20-37", 28),
    ],
)
def test_executions_hand_counts(text: str, count: int) -> None:
    assert executions(parse_order(text)) == count


def test_blocks_in_lists_every_block_with_group_members() -> None:
    assert list(blocks_in(parse_order("3, [7-5]x2, 1*2"))) == [3, 5, 6, 7, 1, 1]


def test_identity_order() -> None:
    assert identity_order(4) == (0, 1, 2, 3)
    assert identity_order(0) == ()


# --------------------------------------------------------------------------------------- steps


@pytest.mark.parametrize(
    ("text", "steps"),
    [("0,2,4-6", (0, 2, 4, 5, 6)), ("0-1", (0, 1)), ("6-4, 0", (0, 4, 5, 6)), ("1,1,1", (1,)), (" 3 ", (3,))],
)
def test_parse_steps(text: str, steps: tuple[int, ...]) -> None:
    assert parse_steps(text) == steps
    assert parse_steps(format_steps(steps)) == steps


def test_format_steps_uses_spans() -> None:
    assert format_steps((0, 2, 4, 5, 6)) == "0,2,4-6"
    assert format_steps((0, 1)) == "0-1"


@pytest.mark.parametrize(("text", "fragment"),
                         [("", "end of text"), ("1*2", "'*'"), ("[1]", "'['"), ("0,a", "'a'"), ("1,", "end of text")])
def test_parse_steps_errors(text: str, fragment: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_steps(text, "f.toml: active_steps")
    (line,) = problems_of(exc)
    assert line.startswith("f.toml: active_steps: ") and fragment in line


@FAST
@given(st.sets(st.integers(0, 60), min_size=1))
def test_steps_round_trip(steps: set[int]) -> None:
    expected = tuple(sorted(steps))
    assert parse_steps(format_steps(expected)) == expected


def test_validate_steps() -> None:
    plan = Plan(active_steps=(0, 1))
    validate_steps(plan, 2)
    validate_steps(Plan(), 1)
    with pytest.raises(PlanError) as exc:
        validate_steps(Plan(active_steps=(0, 3, 5)), 3, "run.plan.toml")
    (line,) = problems_of(exc)
    assert line.startswith("run.plan.toml: active_steps: ")
    assert "'3,5'" in line and "3 steps" in line  # every bad step, in span syntax


def test_applies_at() -> None:
    plan = Plan(active_steps=parse_steps("0,2"))
    assert [plan.applies_at(s) for s in range(4)] == [True, False, True, False]
    assert all(Plan().applies_at(s) for s in range(10))


# ------------------------------------------------------------------------------------ Plan methods


def test_with_order_adds_replaces_removes_and_sorts() -> None:
    p = Plan().with_order("single", parse_order("0-9"))
    p = p.with_order("double", parse_order("0-18"))
    assert [name for name, _ in p.orders] == ["double", "single"]
    assert p.order("single") == tuple(range(10))
    p2 = p.with_order("single", parse_order("5*2"))
    assert p2.order("single") == (5, 5) and p.order("single") == tuple(range(10))  # immutable
    p3 = p2.with_order("single", None)
    assert p3.orders == (("double", tuple(range(19))),) and p3.order("single") is None
    assert Plan().with_order("single", [1, 2]).order("single") == (1, 2)  # stored as a tuple


def test_resolved_fills_identity_where_silent() -> None:
    p = Plan().with_order("single", parse_order("0-9, [10-28]x3, 29-37"))
    r = p.resolved(FLUX)
    assert set(r) == {"double", "single"}
    assert r["double"] == tuple(range(19))
    assert r["single"] == parse_order("0-9, [10-28]x3, 29-37")


def test_resolved_keeps_an_empty_order() -> None:
    # "" = run no block of the stack; it must not fall back to the identity.
    assert Plan().with_order("single", parse_order("")).resolved(FLUX)["single"] == ()


def test_is_identity() -> None:
    assert Plan().is_identity(FLUX)
    assert Plan().with_order("single", parse_order("0-37")).is_identity(FLUX)
    assert Plan().with_order("single", parse_order("0-37")).with_order("double", parse_order("0-18")).is_identity(FLUX)
    assert not Plan().with_order("single", parse_order("0-36")).is_identity(FLUX)
    assert not Plan().with_order("single", parse_order("37-0")).is_identity(FLUX)
    assert not Plan().with_order("single", parse_order("")).is_identity(FLUX)
    assert not Plan().with_order("double", parse_order("0-17,[18]x2")).is_identity(FLUX)


def test_sampling_merged_override_wins_where_set() -> None:
    base = Sampling(prompt="a cat", seed=1, steps=4, width=512, height=768, guidance=3.5)
    over = Sampling(seed=7, guidance=0.0, prompt=None)
    assert base.merged(over) == Sampling(prompt="a cat", seed=7, steps=4, width=512, height=768, guidance=0.0)
    assert base.merged(Sampling()) == base
    assert Sampling().merged(base) == base
    assert Sampling(steps=2).merged(Sampling(width=64)) == Sampling(steps=2, width=64)


# -------------------------------------------------------------------------------------- validation


def test_validate_accepts_in_range_flux_plan() -> None:
    p = Plan().with_order("double", parse_order("18-0")).with_order("single", parse_order("0-9, [10-37]x3"))
    validate(p, FLUX)


def test_validate_out_of_range_names_index_and_stack_size() -> None:
    p = Plan().with_order("double", parse_order("0-19")).with_order("single", parse_order("[36-38]"))
    with pytest.raises(PlanError) as exc:
        validate(p, FLUX, "x.plan.toml")
    lines = problems_of(exc)
    assert len(lines) == 2
    assert lines[0].startswith("x.plan.toml: order.double: ") and "'19'" in lines[0] and "19 blocks" in lines[0]
    assert lines[1].startswith("x.plan.toml: order.single: ") and "'38'" in lines[1] and "38 blocks" in lines[1]


def test_validate_lists_all_out_of_range_indices_of_a_stack_on_one_line() -> None:
    with pytest.raises(PlanError) as exc:
        validate(Plan().with_order("double", parse_order("17-21, 20, [0, 25]")), FLUX, "s")
    (line,) = problems_of(exc)
    assert line.startswith("s: order.double: ")
    assert "'19-21,25'" in line and "19 blocks" in line


def test_validate_unknown_stack() -> None:
    p = Plan().with_order("triple", (0,)).with_order("single", parse_order("0-40"))
    with pytest.raises(PlanError) as exc:
        validate(p, FLUX, "u.toml")
    lines = problems_of(exc)
    assert len(lines) == 2  # single: 38-40 out of range; triple unknown
    assert any(line.startswith("u.toml: order.single: ") and "'38-40'" in line for line in lines)
    assert any(line.startswith("u.toml: order.triple: ") and "'triple'" in line for line in lines)
    assert all(line.startswith("u.toml: order.") for line in lines)
    with pytest.raises(PlanError) as exc2:
        validate(Plan().with_order("single", (0,)), SD3, "u.toml")
    (line,) = problems_of(exc2)
    assert "order.single" in line and "'single'" in line and "double" in line


@pytest.mark.parametrize("text", ["0-23", "0-22", "", "23", "22-0", "0-10, [11-13]x2, 23", "5*3, 23", "[0-22]x4, 23",
                                  "0-22*2, 23"])
def test_sd3_last_block_allowed(text: str) -> None:
    validate(Plan().with_order("double", parse_order(text)), SD3)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[22,23]", "parallel group"),
        ("0-22, [22-23]x2", "parallel group"),
        ("0-23, 23", "repeated"),
        ("23*2", "repeated"),
        ("23, 0", "followed"),
        ("23-0", "followed"),
        ("0-23, [1,2]", "followed"),
        ("0-21, 23, 22", "followed"),
    ],
)
def test_sd3_last_block_rule(text: str, fragment: str) -> None:
    with pytest.raises(PlanError) as exc:
        validate(Plan().with_order("double", parse_order(text)), SD3, "sd3.plan.toml")
    (line,) = problems_of(exc)
    assert line.startswith("sd3.plan.toml: order.double: ")
    assert "23" in line and fragment in line


def test_sd3_rule_does_not_apply_to_flux() -> None:
    validate(Plan().with_order("double", parse_order("[17,18], 18, 0")), FLUX)


def test_validate_rejects_negative_index() -> None:
    # Orders built through the API can hold -1, which torch would read as the last block.
    with pytest.raises(PlanError) as exc:
        validate(Plan().with_order("single", (-1,)), FLUX, "api")
    assert "'-1'" in str(exc.value)


# -------------------------------------------------------------------------------------- plan files

SPEC_EXAMPLE = """\
version = 1
model = "flux-schnell"        # optional
name = "single: looped parallel 10-28"   # optional
note = "free text"                        # optional
active_steps = "0-1"          # optional, span syntax
[order]
double = "0-18"
single = "0-9, [10-28]x3, 29-37"
[sampling]   # optional
prompt = "..."
seed = 0
steps = 4
width = 1024
height = 1024
guidance = 0.0
"""

SPEC_PLAN = Plan(
    orders=(
        ("double", tuple(range(19))),
        ("single", tuple(range(10)) + (Group(tuple(range(10, 29)), 3),) + tuple(range(29, 38))),
    ),
    active_steps=(0, 1),
    model="flux-schnell",
    name="single: looped parallel 10-28",
    note="free text",
    sampling=Sampling(prompt="...", seed=0, steps=4, width=1024, height=1024, guidance=0.0),
)


def test_loads_spec_example() -> None:
    assert loads(SPEC_EXAMPLE) == SPEC_PLAN


def test_dumps_exact_format() -> None:
    assert dumps(SPEC_PLAN) == (
        'version = 1\n'
        'model = "flux-schnell"\n'
        'name = "single: looped parallel 10-28"\n'
        'note = "free text"\n'
        'active_steps = "0-1"\n'
        '\n'
        '[order]\n'
        'double = "0-18"\n'
        'single = "0-9, [10-28]x3, 29-37"\n'
        '\n'
        '[sampling]\n'
        'prompt = "..."\n'
        'seed = 0\n'
        'steps = 4\n'
        'width = 1024\n'
        'height = 1024\n'
        'guidance = 0.0\n'
    )
    assert loads(dumps(SPEC_PLAN)) == SPEC_PLAN


def test_minimal_plan_file() -> None:
    assert loads("version = 1\n") == Plan()
    assert loads(dumps(Plan())) == Plan()
    assert tomllib.loads(dumps(Plan())) == {"version": 1, "order": {}}  # no step tables: version 1


def test_empty_order_round_trips_as_empty_string() -> None:
    p = Plan().with_order("single", ())
    assert 'single = ""' in dumps(p)
    assert loads(dumps(p)) == p


def test_guidance_integer_is_read_as_float() -> None:
    s = loads("version = 1\n[sampling]\nguidance = 3\n").sampling.guidance
    assert s == 3.0 and isinstance(s, float)


def test_dumps_comment_lines_on_top() -> None:
    text = dumps(SPEC_PLAN, comment="line1\nline2")
    assert text.startswith("# line1\n# line2\nversion = 1\n")
    assert loads(text) == SPEC_PLAN
    text2 = dumps(Plan(name="n"), comment="a\n\nb # c")
    assert text2.startswith("# a\n#\n# b # c\n")
    assert loads(text2) == Plan(name="n")


def test_strings_with_quotes_backslashes_unicode_and_newlines_round_trip() -> None:
    p = Plan(name='a "quoted" \\ back\\slash', note="line 1\nline 2\r\n\ttab \u00e9\u6f22\U0001f3a8 '''\"\"\"",
             model="m\\\\n", sampling=Sampling(prompt='say "hi"\n\\n'))
    assert loads(dumps(p)) == p


_text_alphabet = st.one_of(
    st.sampled_from(['"', "\\", "\n", "\r", "\t", "'", "#", "=", "[", "]", "\u00e9", "\U0001f3a8", "\u2028", "\x00", "\x1b"]),
    st.characters(exclude_categories=("Cs",)),
)
_texts = st.text(_text_alphabet, max_size=20)
_prompts = _texts.filter(lambda s: s.strip() != "")
_samplings = st.builds(
    Sampling,
    prompt=st.one_of(st.none(), _prompts),
    seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    steps=st.one_of(st.none(), st.integers(1, 1000)),
    width=st.one_of(st.none(), st.integers(1, 8192)),
    height=st.one_of(st.none(), st.integers(1, 8192)),
    guidance=st.one_of(st.none(), st.floats(min_value=0, allow_nan=False, allow_infinity=False)),
)
_stack_orders = st.dictionaries(st.sampled_from(["double", "single", "joint_2", "x-y"]), unit_orders, max_size=3)


def _step_tables(drawn: list[tuple[set[int], dict[str, Any]]]) -> tuple[StepTable, ...]:
    """Tables with disjoint step sets (each takes the steps no earlier one took), sorted by first step."""
    taken: set[int] = set()
    tables = []
    for steps, orders in drawn:
        own = steps - taken
        taken |= own
        if own:
            tables.append(StepTable(tuple(sorted(own)), tuple(sorted(orders.items()))))
    return tuple(sorted(tables, key=lambda t: t.steps[0]))


step_tables = st.lists(st.tuples(st.sets(st.integers(0, 50), min_size=1, max_size=8), _stack_orders),
                       max_size=4).map(_step_tables)
_windows = st.one_of(st.none(), st.sets(st.integers(0, 50), min_size=1, max_size=8).map(lambda s: tuple(sorted(s))))
_uncond = st.one_of(st.none(), st.builds(lambda orders, steps: Branch(tuple(sorted(orders.items())), steps),
                                         _stack_orders, _windows))
_extra = st.one_of(st.none(), st.builds(lambda orders, steps, scale: Branch(tuple(sorted(orders.items())), steps, scale),
                                        _stack_orders, _windows,
                                        st.floats(-100, 100, allow_nan=False, allow_infinity=False)))
plans = st.builds(
    lambda orders, steps, model, name, note, sampling, tables, uncond, extra: Plan(
        orders=tuple(sorted(orders.items())),
        active_steps=None if steps is None or tables else tuple(sorted(steps)),  # never both
        model=model,
        name=name,
        note=note,
        sampling=sampling,
        step_orders=tables,
        uncond=uncond,
        extra=extra,
    ),
    _stack_orders,
    st.one_of(st.none(), st.sets(st.integers(0, 50), min_size=1)),
    st.one_of(st.none(), _texts),
    st.one_of(st.none(), _texts),
    st.one_of(st.none(), _texts),
    _samplings,
    st.one_of(st.just(()), step_tables),
    _uncond,
    _extra,
)


@FAST
@given(plans, st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f",
                                                         exclude_categories=("Cs",)), max_size=30)))
def test_dumps_loads_round_trip(plan: Plan, comment: str | None) -> None:
    text = dumps(plan, comment)
    assert loads(text) == plan
    assert dumps(loads(text)) == dumps(plan)
    # Version 2 exactly when the plan has step tables or guidance branches; a version-1 text has neither.
    assert re.findall(r"^version = (\d+)$", text, re.M) == (["2"] if plan.step_orders or plan.has_branches else ["1"])
    assert ("[[steps]]" in text.splitlines()) == bool(plan.step_orders)
    assert ("[extra]" in text.splitlines()) == (plan.extra is not None)


# ---------------------------------------------------------------------------- plan file errors

BAD_FILES = [
    # (file text, key named, offending token or None)
    ("version = 1\nbogus = 3\n", "bogus", "bogus"),
    ("version = 1\n[sampling]\ncfg = 3\n", "sampling.cfg", "cfg"),
    ("", "version", None),
    ("model = 'flux'\n", "version", None),
    ("version = 3\n", "version", "'3'"),
    ("version = 0\n", "version", "'0'"),
    ('version = "1"\n', "version", "'1'"),
    ("version = true\n", "version", "'true'"),
    ("version = 1\nname = 5\n", "name", "'5'"),
    ("version = 1\nmodel = ['a']\n", "model", "'a'"),
    ("version = 1\nnote = 1.5\n", "note", "'1.5'"),
    ("version = 1\nactive_steps = 3\n", "active_steps", "'3'"),
    ('version = 1\nactive_steps = "0-x"\n', "active_steps", "'x'"),
    ('version = 1\nactive_steps = ""\n', "active_steps", "end of text"),
    ("version = 1\n[order]\nsingle = 5\n", "order.single", "'5'"),
    ('version = 1\n[order]\nsingle = "0-9, [10-28]y3"\n', "order.single", "'y'"),
    ('version = 1\n[order]\nsingle = "3*0"\n', "order.single", "'0'"),
    ('version = 1\n[order]\ndouble = "[1-3,2]"\n', "order.double", "'2' (column 6)"),
    ('version = 1\n[order.single]\nx = "1"\n', "order.single", "'x'"),
    ('version = 1\n[sampling]\nseed = "zero"\n', "sampling.seed", "'zero'"),
    ("version = 1\n[sampling]\nseed = 1.5\n", "sampling.seed", "'1.5'"),
    ("version = 1\n[sampling]\nseed = -1\n", "sampling.seed", "'-1'"),
    ("version = 1\n[sampling]\nsteps = true\n", "sampling.steps", "'true'"),
    ("version = 1\n[sampling]\nsteps = 0\n", "sampling.steps", "'0'"),
    ("version = 1\n[sampling]\nwidth = 0\n", "sampling.width", "'0'"),
    ("version = 1\n[sampling]\nheight = -3\n", "sampling.height", "'-3'"),
    ('version = 1\n[sampling]\nguidance = "0"\n', "sampling.guidance", "'0'"),
    ("version = 1\n[sampling]\nguidance = -1.0\n", "sampling.guidance", "'-1.0'"),
    ("version = 1\n[sampling]\nguidance = nan\n", "sampling.guidance", "'nan'"),
    ("version = 1\n[sampling]\nguidance = inf\n", "sampling.guidance", "'inf'"),
    ("version = 1\n[sampling]\nprompt = 3\n", "sampling.prompt", "'3'"),
    ('version = 1\n[sampling]\nprompt = "  \\n "\n', "sampling.prompt", None),
]


@pytest.mark.parametrize(("text", "key", "token"), BAD_FILES)
def test_loads_error_names_source_key_and_token(text: str, key: str, token: str | None) -> None:
    with pytest.raises(PlanError) as exc:
        loads(text, "/plans/bad.plan.toml")
    (line,) = problems_of(exc)
    assert line.startswith(f"/plans/bad.plan.toml: {key}: ")
    if token is not None:
        assert token.lower() in line.lower()


def test_loads_invalid_toml() -> None:
    with pytest.raises(PlanError) as exc:
        loads("version = = 1\n", "t.toml")
    (line,) = problems_of(exc)
    assert line.startswith("t.toml: ") and "TOML" in line


def test_loads_reports_every_problem_one_line_each() -> None:
    text = (
        "version = 3\n"
        "colour = 'red'\n"
        "[order]\n"
        "single = '0-9,,'\n"
        "double = '[1,1]'\n"
        "[sampling]\n"
        "seed = 'x'\n"
        "sampler = 'euler'\n"
        "steps = 0\n"
    )
    with pytest.raises(PlanError) as exc:
        loads(text, "many.toml")
    lines = problems_of(exc)
    assert len(lines) == 7
    assert all(line.startswith("many.toml: ") for line in lines)
    for key in ("version", "colour", "order.single", "order.double", "sampling.seed", "sampling.sampler", "sampling.steps"):
        assert sum(line.startswith(f"many.toml: {key}: ") for line in lines) == 1, key


def test_plan_error_is_value_error() -> None:
    assert issubclass(PlanError, ValueError)
    assert PlanError(["a", "b"]).problems == ["a", "b"] and str(PlanError(["a", "b"])) == "a\nb"


# ------------------------------------------------------------------------------------- save & load


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "p.plan.toml"
    returned = save(SPEC_PLAN, path, comment="made by a test")
    assert Path(returned) == path
    assert path.read_text(encoding="utf-8").startswith("# made by a test\nversion = 1\n")
    assert load(path) == SPEC_PLAN
    assert load(str(path)) == SPEC_PLAN
    assert os.listdir(path.parent) == ["p.plan.toml"]  # no temp file left behind


def test_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "p.plan.toml"
    save(SPEC_PLAN, path)
    save(Plan(name="second"), path)
    assert load(path) == Plan(name="second")
    assert os.listdir(tmp_path) == ["p.plan.toml"]


def test_save_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.plan.toml"
    save(SPEC_PLAN, path)
    before = path.read_bytes()

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(plan_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        save(Plan(name="new"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.plan.toml"]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.plan.toml"
    with pytest.raises(PlanError) as exc:
        load(missing)
    (line,) = problems_of(exc)
    assert str(missing) in line

    with pytest.raises(PlanError) as exc2:
        load(tmp_path)  # a folder
    (line2,) = problems_of(exc2)
    assert str(tmp_path) in line2

    bad = tmp_path / "bad.plan.toml"
    bad.write_text('version = 1\n[order]\nsingle = "0-9,?"\n', encoding="utf-8")
    with pytest.raises(PlanError) as exc3:
        load(bad)
    (line3,) = problems_of(exc3)
    assert line3.startswith(f"{bad}: order.single: ") and "'?'" in line3

    binary = tmp_path / "bin.plan.toml"
    binary.write_bytes(b"\xff\xfe\x00version")
    with pytest.raises(PlanError) as exc4:
        load(binary)
    (line4,) = problems_of(exc4)
    assert str(binary) in line4


# ------------------------------------------------------------------------------------------- PNGs


def _write_png(path: Path, chunks: dict[str, str] | None = None, zip_text: bool = False) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (chunks or {}).items():
        info.add_itxt(key, value, zip=zip_text)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("zip_text", [False, True])
def test_load_png_reads_the_plan(tmp_path: Path, zip_text: bool) -> None:
    plan = SPEC_PLAN.with_order("double", parse_order("18-0"))
    png = _write_png(tmp_path / "img.png", {"other": "x", PNG_PLAN_KEY: dumps(plan, comment="prompt \u00e9")}, zip_text)
    assert load(png) == plan
    upper = png.rename(tmp_path / "IMG.PNG")
    assert load(upper) == plan


def test_load_png_without_plan(tmp_path: Path) -> None:
    png = _write_png(tmp_path / "plain.png", {"Comment": "hello"})
    with pytest.raises(PlanError) as exc:
        load(png)
    (line,) = problems_of(exc)
    assert str(png) in line


def test_load_png_with_a_bad_plan_names_the_png(tmp_path: Path) -> None:
    png = _write_png(tmp_path / "bad.png", {PNG_PLAN_KEY: 'version = 1\n[order]\nsingle = "0-9*0"\n'})
    with pytest.raises(PlanError) as exc:
        load(png)
    (line,) = problems_of(exc)
    assert line.startswith(f"{png}: order.single: ") and "'0'" in line


def test_load_png_missing_or_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as exc:
        load(tmp_path / "gone.png")
    (line,) = problems_of(exc)
    assert "gone.png" in line
    fake = tmp_path / "fake.png"
    fake.write_text("not an image", encoding="utf-8")
    with pytest.raises(PlanError) as exc2:
        load(fake)
    (line2,) = problems_of(exc2)
    assert str(fake) in line2


# ------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("text", ["5*1000, 5*1000", "5*1000, 5", "1-2*600, 1-2*600", "[1,2]x600,[1,2]x600"])
def test_counts_beyond_max_count_print_as_several_items_that_reparse(text: str) -> None:
    # Each count is <= MAX_COUNT, so the order is valid; printing must not merge it into one count > MAX_COUNT.
    order = parse_order(text)
    assert parse_order(format_order(order)) == order
    plan = Plan().with_order("single", order)
    assert loads(dumps(plan)) == plan


def test_dumps_escapes_the_del_character() -> None:
    # json.dumps leaves U+007F (DEL) raw, but TOML forbids it unescaped in basic strings.
    plan = Plan(name="a\x7fb", sampling=Sampling(prompt="x\x7f"))
    assert loads(dumps(plan)) == plan


def test_float_version_is_rejected() -> None:
    # `version = 1.0` is a float: the wrong type, even though it equals 1.
    with pytest.raises(PlanError) as exc:
        loads("version = 1.0\n", "v.toml")
    assert "version" in str(exc.value)


def test_quoted_stack_name_round_trips() -> None:
    # A quoted [order] key that is not a bare TOML key must be written back quoted.
    plan = loads('version = 1\n[order]\n"a b" = "1"\n')
    assert loads(dumps(plan)) == plan


@pytest.mark.parametrize(("text", "token"), [('version = 1\norder = "0-3"\n', "0-3"), ("version = 1\nsampling = 3\n", "3")])
def test_non_table_error_names_the_value(text: str, token: str) -> None:
    with pytest.raises(PlanError) as exc:
        loads(text, "t.toml")
    (line,) = problems_of(exc)
    assert f"'{token}'" in line
