"""A property-based fuzzer of the plan loader (hardening items 5, 13, 14, 15).

Whatever a plan file holds, `load` (the file) and `loads` (its text) end in a Plan or a PlanError and
nothing else, agree with each other, and say it in at most MAX_PROBLEMS printable lines of bounded
length; an accepted plan stays within every cap (stacks, executions, steps, name, note) and checking it
against a layout fails only with a PlanError too. Every input the hardening issue names is an explicit
@example; the generated cases mix TOML of every value type (deep nesting, long numbers, control
characters, long strings) with order strings of huge spans, counts and groups. Derandomized, so CI runs
the same cases every time; bounded by max_examples, not by a clock.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from dit_explore.engine import plan_bench
from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import (
    MAX_EXECUTIONS,
    MAX_NAME,
    MAX_NOTE,
    MAX_PLAN_BYTES,
    MAX_PLAN_EXECUTIONS,
    MAX_PROBLEMS,
    MAX_STACKS,
    MAX_STEP_TABLES,
    MAX_STEPS,
    Plan,
    PlanError,
    dumps,
    executions,
    load,
    loads,
    validate,
    validate_steps,
)

FLUX = Layout("flux", (Stack("double", "transformer_blocks", 19), Stack("single", "single_transformer_blocks", 38)))
SOURCE = "fuzz.plan.toml"
LINE_LIMIT = 1200  # characters of one problem line, the file's path included
_FOLDER = Path(tempfile.mkdtemp(prefix="dit-explore-fuzz-"))
_COUNTER = itertools.count()

# ----------------------------------------------------------------------------------- strategies


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


_chars = st.one_of(
    st.sampled_from(["\x1b", "\x07", "\n", "\r", "\x00", "\x9b", "\u202e", "\u2028", '"', "\\", "[", "]", "=", "#"]),
    st.characters(exclude_categories=("Cs",)),
)
_huge = st.one_of(st.integers(0, 10**15).map(str), st.integers(1, 6000).map(lambda n: "9" * n),
                  st.integers(1, 30).map(lambda n: "0" * n + "1"), st.sampled_from(["9999", "10000", "999", "1000", "1001"]))
_digits = st.one_of(st.integers(0, 40).map(str), st.integers(0, 40).map(str), _huge)  # mostly a real block
_small = st.one_of(st.integers(1, 5).map(str), st.integers(1, 5).map(str), _huge)
_span = st.builds(lambda a, b: a if b is None else f"{a}-{b}", _digits, st.one_of(st.none(), _digits))
_mode = st.one_of(st.sampled_from(["@reuse", "@forecast", "@reuse", "@", "@x", "@REUSE"]),
                  st.text("@abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=40))
_item = st.one_of(
    _span,
    st.builds(lambda s, n: f"{s}*{n}", _span, _small),
    st.builds(lambda s, m, n: f"{s}{m}" + ("" if n is None else f"*{n}"), _span, _mode, st.one_of(st.none(), _small)),
    st.builds(lambda spans, n: f"[{','.join(spans)}]" + ("" if n is None else f"x{n}"),
              st.lists(_span, min_size=1, max_size=4), st.one_of(st.none(), _small)),
)
_order_text = st.one_of(
    st.lists(_item, max_size=8).map(", ".join),
    st.lists(_item, max_size=8).map(", ".join),
    st.text(alphabet="0123456789,-*[]x \t", max_size=60),
    st.text(_chars, max_size=20),
)


def _nested(open_: str, close: str, inner: str, depth: int) -> str:
    return open_ * depth + inner + close * depth


_scalar = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.floats().map(lambda f: "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)),
    st.sampled_from(["true", "false", "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "0x1f", "1e400", "-0"]),
    st.text(_chars, max_size=40).map(_toml_string),
    st.integers(0, 5000).map(lambda n: _toml_string("x" * n)),
    _order_text.map(_toml_string),
)
_value = st.one_of(
    _scalar,
    st.lists(_scalar, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.builds(_nested, st.just("["), st.just("]"), _scalar, st.integers(1, 3000)),
    st.builds(_nested, st.just("{a="), st.just("}"), _scalar, st.integers(1, 2000)),
)
_key = st.one_of(st.sampled_from(["version", "model", "name", "note", "active_steps", "order", "sampling", "single",
                                  "double", "prompt", "seed", "steps", "width", "height", "guidance"]),
                 st.text(_chars, min_size=1, max_size=12).map(_toml_string))


_benign_span = st.builds(lambda a, b: str(a) if b is None else f"{a}-{b}", st.integers(0, 40),
                         st.one_of(st.none(), st.integers(0, 40)))
_benign_order = st.lists(st.one_of(
    _benign_span,
    st.builds(lambda sp, n: f"{sp}*{n}", _benign_span, st.integers(1, 4)),
    st.builds(lambda ms, n: f"[{','.join(map(str, ms))}]" + ("" if n is None else f"x{n}"),
              st.lists(st.integers(0, 40), min_size=1, max_size=4, unique=True), st.one_of(st.none(), st.integers(1, 4))),
), max_size=6).map(", ".join)
_benign_steps = st.lists(_benign_span, min_size=1, max_size=3).map(",".join)


def _shifted(steps: str, by: int) -> str:
    """A step set in span syntax with every index moved up by `by` (the next table's steps)."""
    return re.sub(r"\d+", lambda m: str(int(m.group()) + by), steps)


_benign_sampling = {
    "prompt": st.text(_chars, min_size=1, max_size=30).filter(str.strip).map(_toml_string),
    "seed": st.integers(0, 2**63 - 1).map(str),
    "steps": st.integers(1, 1000).map(str),
    "width": st.integers(1, 4096).map(str),
    "height": st.integers(1, 4096).map(str),
    "guidance": st.floats(0, 100).map(repr),
}


@st.composite
def plan_texts(draw: st.DrawFn) -> str:
    """Plan files: a third plausible plans (each key's value may still be hostile, now and then), a
    third hostile TOML throughout, the rest anything at all or nearly valid plans with one bad key."""
    mode = draw(st.sampled_from(["plausible", "plausible", "hostile", "hostile", "text"]))
    if mode == "text":
        return draw(st.text(_chars, max_size=200))
    odds = 12 if mode == "plausible" else 3  # one value in `odds` is drawn from the hostile pool

    def hostile() -> bool:
        return draw(st.integers(1, odds)) == 1

    lines = []
    tables = draw(st.integers(0, 3)) if draw(st.booleans()) else 0  # [[steps]] tables (version 2)
    if hostile():
        tables = draw(st.sampled_from([MAX_STEP_TABLES, MAX_STEP_TABLES + 1, 40]))
    if draw(st.integers(0, 19)) > 0:
        lines.append(f"version = {draw(_value) if hostile() else ('2' if tables or draw(st.booleans()) else '1')}")
    for key, cap in (("model", MAX_NAME), ("name", MAX_NAME), ("note", MAX_NOTE)):
        if draw(st.booleans()):
            length = draw(st.sampled_from([0, 5, 20, cap] + ([cap + 1, 3 * cap] if hostile() else [])))
            plain = _toml_string(draw(st.text(_chars, min_size=length, max_size=length)) if length < 50 else "n" * length)
            lines.append(f"{key} = " + (draw(_value) if hostile() else plain))
    if draw(st.booleans()) and (not tables or hostile()):  # with tables: refused, so only now and then
        steps = draw(_value) if hostile() else draw((_order_text if hostile() else _benign_order).map(_toml_string))
        lines.append(f"active_steps = {steps}")
    if hostile():
        lines.append(f"{draw(_key)} = {draw(_value)}")
    if draw(st.booleans()):
        lines.append("[order]")
        names = draw(st.lists(_key if hostile() else st.sampled_from(["single", "double"]), max_size=MAX_STACKS + 2,
                              unique=True))
        for name in names:
            order = draw(_value) if hostile() else draw((_order_text if hostile() else _benign_order).map(_toml_string))
            lines.append(f"{name} = {order}")
    for k in range(tables):
        lines.append("[[steps]]")
        if draw(st.integers(0, 19)) > 0:  # now and then a table without its steps
            benign = _benign_steps.map(lambda text, k=k: _shifted(text, 50 * k))  # disjoint but now and then
            steps = draw(_value) if hostile() else draw((_order_text if hostile() else benign).map(_toml_string))
            lines.append(f"steps = {steps}")
        if hostile():
            lines.append(f"{draw(_key)} = {draw(_value)}")
        if draw(st.integers(0, 19)) > 0:  # or without its [steps.order]
            lines.append("[steps.order]")
            names = draw(st.lists(_key if hostile() else st.sampled_from(["single", "double"]), max_size=3, unique=True))
            for name in names:
                order = draw(_value) if hostile() else draw((_order_text if hostile() else _benign_order).map(_toml_string))
                lines.append(f"{name} = {order}")
    for branch in ("uncond", "extra"):  # guidance-branch tables (version 2), now and then
        if draw(st.integers(0, 3)) == 0:
            lines.append(f"[{branch}]")
            if branch == "extra" and draw(st.integers(0, 9)) > 0:
                lines.append(f"scale = {draw(_value) if hostile() else draw(st.sampled_from(['2.8', '-1', '0', '7']))}")
            if draw(st.booleans()):
                steps = draw(_value) if hostile() else draw(_benign_steps.map(_toml_string))
                lines.append(f"steps = {steps}")
            if hostile():
                lines.append(f"{draw(_key)} = {draw(_value)}")
            if draw(st.integers(0, 9)) > 0:
                lines.append(f"[{branch}.order]")
                for name in draw(st.lists(_key if hostile() else st.sampled_from(["single", "double"]), max_size=3,
                                          unique=True)):
                    order = draw(_value) if hostile() else draw((_order_text if hostile() else _benign_order).map(_toml_string))
                    lines.append(f"{name} = {order}")
    if draw(st.booleans()):
        lines.append("[sampling]")
        for name in draw(st.lists(_key if hostile() else st.sampled_from(sorted(_benign_sampling)), max_size=6,
                                  unique=True)):
            value = draw(_value) if hostile() or name not in _benign_sampling else draw(_benign_sampling[name])
            lines.append(f"{name} = {value}")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n# end\n"]))


# ------------------------------------------------------------------------------------- the check


def _terminal_safe(line: str) -> bool:
    """No character that can steer a terminal or break the line: controls (Cc), format characters
    (Cf: bidi overrides), line and paragraph separators, surrogates, private use, unassigned. (Spaces
    other than ' ', which str.isprintable() also rejects, are harmless.)"""
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") for ch in line)


def _check_lines(error: PlanError, source: str) -> list[str]:
    lines = error.problems
    assert str(error) == "\n".join(lines)
    assert 1 <= len(lines) <= MAX_PROBLEMS
    for line in lines:
        assert _terminal_safe(line), line  # no ESC, BEL, newline, C1, bidi override
        assert len(line) <= LINE_LIMIT + len(source), len(line)
        assert line.startswith(f"{source}: ") or line.startswith("... and ")
    return lines


def _outcome(fn: Any, source: str) -> Plan | list[str]:
    try:
        return fn()
    except PlanError as exc:  # anything else fails the test
        return _check_lines(exc, source)


def check_plan_text(text: str) -> None:
    path = _FOLDER / f"{next(_COUNTER)}.plan.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        from_file = _outcome(lambda: load(path), str(path))
    finally:
        path.unlink()
    from_text = _outcome(lambda: loads(text, SOURCE), SOURCE)
    if currently_in_test_context():  # what the generated cases reach (--hypothesis-show-statistics)
        event("refused" if isinstance(from_text, list) else "accepted")
        if not isinstance(from_text, list) and from_text.step_orders:
            event("accepted with [[steps]] tables")
        if isinstance(from_text, list):
            event(f"first problem: {from_text[0].removeprefix(SOURCE + ': ').split(':')[0][:12]!r}")
    if isinstance(from_text, list):
        assert isinstance(from_file, list)
        assert [line.replace(str(path), SOURCE) for line in from_file] == from_text or (
            len(text.encode("utf-8", "surrogatepass")) > MAX_PLAN_BYTES)  # the file is refused by its reader
        return
    assert from_file == from_text
    plan = from_text
    # An accepted plan is within every cap.
    every = [plan.orders, *(table.orders for table in plan.step_orders)]
    assert all(len(orders) <= MAX_STACKS for orders in every)
    assert all(executions(order) <= MAX_EXECUTIONS for orders in every for _, order in orders)
    assert sum(executions(order) for orders in every for _, order in orders) <= MAX_PLAN_EXECUTIONS
    assert plan.active_steps is None or (len(plan.active_steps) <= MAX_STEPS
                                         and all(0 <= s < MAX_STEPS for s in plan.active_steps))
    # ... its step tables too: at most MAX_STEP_TABLES, disjoint, sorted, never with active_steps.
    assert len(plan.step_orders) <= MAX_STEP_TABLES and (plan.active_steps is None or not plan.step_orders)
    steps = [s for table in plan.step_orders for s in table.steps]
    assert len(steps) == len(set(steps)) <= MAX_STEPS and all(0 <= s < MAX_STEPS for s in steps)
    assert [t.steps[0] for t in plan.step_orders] == sorted(t.steps[0] for t in plan.step_orders)
    assert all(list(t.steps) == sorted(set(t.steps)) for t in plan.step_orders)
    assert all(len(v or "") <= cap for v, cap in ((plan.name, MAX_NAME), (plan.model, MAX_NAME), (plan.note, MAX_NOTE)))
    # Checking it against a model fails only with a PlanError too.
    _outcome(lambda: validate(plan, FLUX, SOURCE), SOURCE)
    _outcome(lambda: validate_steps(plan, 50, SOURCE), SOURCE)
    # It prints back to a plan that reads as itself (when that text is within the size limit).
    again = dumps(plan)
    if len(again.encode()) <= MAX_PLAN_BYTES:
        assert loads(again) == plan


# ---------------------------------------------------------------------------------------- the fuzz

ESC_KEY = 'version = 1\n"\\u001b]0;pwned\\u0007\\u001b[2J" = 1\n'
ESC_VALUE = 'version = 1\nname = "\\u001b]0;pwned\\u0007"\nnote = ["\\u001b[31m", 1]\n[order]\nsingle = "\\u001b"\n'
ESC_RAW = "version = 1\nname = 5 # \x1b]0;pwned\x07\n"  # raw control characters where TOML allows none


@settings(max_examples=520, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.filter_too_much])
@given(plan_texts())
@example('version = 1\n[sampling]\nguidance = ' + '9' * 400 + '\n')  # an integer beyond any float (found by this fuzzer)
@example('version = 1\n[order]\nsingle = "0-99999999"\n')  # 63 s and several GB before
@example('version = 1\n[order]\nsingle = "[0-30000]"\n')  # 8.5 s: a quadratic duplicate check
@example('version = 1\n[order]\nsingle = "' + "0," * 5_000_000 + '0"\n')  # 10 MB of "0,0,0,…": 61 s
@example('version = 1\nactive_steps = "0-200000000"\n')  # MemoryError
@example('version = 1\n[order]\nsingle = "' + "9" * 5000 + '"\n')  # a 5000-digit index
@example("version = " + "9" * 5000 + "\n")  # a 5000-digit TOML integer: over Python's 4300-digit limit
@example("version = 1\nname = " + "[" * 10_000 + "]" * 10_000 + "\n")  # nested TOML: RecursionError
@example("version = 1\nname = " + "{a=" * 10_000 + "1" + "}" * 10_000 + "\n")  # nested inline tables
@example("version = 1\n" + ".".join(["a"] * 5000) + " = 1\n")  # a deeply dotted key
@example("version = 1\n[" + ".".join(["a"] * 5000) + "]\n")  # a deeply dotted table header
@example('version = "1"\n')  # "unsupported version at '1' (this dit-explore reads 1)" before
@example('version = "1\\n2"\n')  # printed two lines before
@example(ESC_KEY)  # ESC/BEL from a shared plan file reached the terminal
@example(ESC_VALUE)
@example(ESC_RAW)
@example('version = 1\nname = "' + "n" * (2 << 20) + '"\n')  # a 2 MiB name: FrameTooLarge in the TUI
@example(f'version = 1\nname = "{"n" * 1000}"\nnote = "{"t" * 10_000}"\nmodel = "{"m" * 1000}"\n')
@example(plan_bench.largest_valid_plan())  # the largest valid plan: accepted
@example(plan_bench.largest_valid_plan() + "#")  # one byte more: refused on size alone
@example(plan_bench.largest_valid_step_plan())  # the largest valid version-2 plan: accepted
@example('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\n[[steps]]\nsteps = "0"\n[steps.order]\n')  # overlap
@example('version = 1\n[[steps]]\nsteps = "0"\n[steps.order]\n')  # tables in a version-1 plan
@example('version = 2\n[order]\nsingle = "0-9999@reuse"\n')  # a cached span over the execution budget
@example('version = 2\n[order]\nsingle = "' + "0-37@forecast, " * 300 + '0"\n')  # 300 occurrences of one span
@example('version = 2\n[order]\nsingle = "4-11' + "@reuse" * 1000 + '"\n')  # mode after mode
@example('version = 2\n[order]\nsingle = "4@' + "r" * 100_000 + '"\n')  # a 100 000-letter mode
@example('version = 2\n[order]\nsingle = "0-3, 4-11@reuse"\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = "0-3"\n')
@example("")
def test_any_plan_file_is_a_plan_or_one_plan_error(text: str) -> None:
    check_plan_text(text)


def test_every_adversarial_64_kib_plan_of_the_benchmark() -> None:
    """The benchmark's adversarial plans (BENCHMARKS.md, "Plan parser bounds") through the same check."""
    for text in plan_bench.adversarial_plans().values():
        check_plan_text(text)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([b"", b"version = 1\n", b"\xef\xbb\xbfversion = 1\nname = '"]))
def test_any_bytes_are_a_plan_or_one_plan_error(data: bytes, head: bytes) -> None:
    path = _FOLDER / f"{next(_COUNTER)}.plan.toml"
    path.write_bytes(head + data)
    try:
        _outcome(lambda: load(path), str(path))
    finally:
        path.unlink()
