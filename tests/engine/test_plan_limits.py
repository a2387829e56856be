"""The plan loader's bounds (hardening items 5, 13, 14, 15): the work is bounded by the text's length,
never by the numbers in it; every failure, whatever the file, is a PlanError of short, printable lines.

Bounds are asserted as counts (tokens read, bytes allocated, lines written), never as times; the times
are in BENCHMARKS.md ("Plan parser bounds", engine/plan_bench.py).
"""

from __future__ import annotations

import os
import re
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dit_explore.engine.core.plan as plan_mod
from dit_explore.engine import plan_bench
from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import (
    MAX_BLOCK_INDEX,
    MAX_EXECUTIONS,
    MAX_NAME,
    MAX_NOTE,
    MAX_PLAN_BYTES,
    MAX_PLAN_EXECUTIONS,
    MAX_PROBLEMS,
    MAX_STACKS,
    MAX_STEP_TABLES,
    MAX_STEPS,
    PNG_PLAN_KEY,
    Group,
    Plan,
    PlanError,
    dumps,
    executions,
    load,
    loads,
    parse_order,
    parse_steps,
    validate,
)
from tests.guarded import in_thread

FLUX = Layout("flux", (Stack("double", "transformer_blocks", 19), Stack("single", "single_transformer_blocks", 38)))


def refused(text: str, source: str = "p.toml") -> list[str]:
    """The problem lines of a refused plan text; each is one printable line of bounded length."""
    with pytest.raises(PlanError) as exc:
        loads(text, source)
    return checked(exc.value)


def checked(error: PlanError) -> list[str]:
    lines = str(error).split("\n")
    assert lines == error.problems and 1 <= len(lines) <= MAX_PROBLEMS
    assert all(line.isprintable() and len(line) < 1000 for line in lines), lines
    return lines


def order_text(order: str) -> str:
    return f'version = 1\n[order]\nsingle = "{order}"\n'


@pytest.fixture
def tokens_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many tokens the order/step parsers took from their tokenizers, all parses together."""
    count = [0]
    real = plan_mod._tokenize

    def counting(text: str, where: str) -> Iterator[Any]:
        for token in real(text, where):
            count[0] += 1
            yield token

    monkeypatch.setattr(plan_mod, "_tokenize", counting)
    yield count


def peak_bytes(fn: Any) -> int:
    """Bytes allocated at the peak while fn() runs (tracemalloc: a count, not a clock)."""
    tracemalloc.start()
    try:
        fn()
    except PlanError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ------------------------------------------------------------------ item 5: the issue's own inputs


@pytest.mark.parametrize(("text", "fragment"), [
    (order_text("0-99999999"), f"order.single: a block index must be at most {MAX_BLOCK_INDEX} at '99999999' (column 3)"),
    (order_text("[0-30000]"), f"order.single: a block index must be at most {MAX_BLOCK_INDEX} at '30000' (column 4)"),
    ('version = 1\nactive_steps = "0-200000000"\n',
     f"active_steps: a step index must be at most {MAX_STEPS - 1} at '200000000' (column 3)"),
    (order_text("0-37*1000"), f"order.single: too many block executions per step (at most {MAX_EXECUTIONS}) "
                              "at '1000' (column 6)"),
])
def test_the_issues_plans_are_refused_naming_the_limit_and_token(text: str, fragment: str) -> None:
    (line,) = refused(text)
    assert line == f"p.toml: {fragment}"
    assert peak_bytes(lambda: loads(text)) < 1 << 20  # before: 0-99999999 took several GB


def test_a_ten_megabyte_plan_is_refused_on_size_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    text = order_text("0," * 5_000_000 + "0")

    def no_toml(_text: str) -> Any:
        raise AssertionError("the TOML parser saw a plan over the size limit")

    monkeypatch.setattr(plan_mod.tomllib, "loads", no_toml)
    (line,) = refused(text)
    assert line == f"p.toml: {len(text)} bytes; plans are at most {MAX_PLAN_BYTES} bytes"


def test_the_size_limit_is_in_bytes_and_inclusive() -> None:
    text = plan_bench.largest_valid_plan()
    assert len(text.encode()) == MAX_PLAN_BYTES
    validate(loads(text), FLUX)  # the largest valid plan is accepted
    (line,) = refused(text + "#")
    assert line == f"p.toml: {MAX_PLAN_BYTES + 1} bytes; plans are at most {MAX_PLAN_BYTES} bytes"
    wide = "é" * (MAX_PLAN_BYTES // 2)  # fewer characters than the limit, more bytes
    (line,) = refused(f"# {wide}\nversion = 1\n")
    assert f"{len(wide.encode()) + len('# ') + len(chr(10)) * 2 + len('version = 1')} bytes" in line


def test_refusing_stops_reading_at_the_budget(tokens_read: list[int]) -> None:
    """'0,0,0,…' is refused at the first execution over the budget: the rest is never tokenized."""
    text = "0," * 30_000 + "0"
    with pytest.raises(PlanError) as exc:
        parse_order(text, "w")
    (line,) = checked(exc.value)
    assert line == f"w: too many block executions per step (at most {MAX_EXECUTIONS}) " \
                   f"at '0' (column {2 * MAX_EXECUTIONS + 1})"
    assert tokens_read[0] <= 2 * MAX_EXECUTIONS + 2 < text.count("0") + text.count(",")

    tokens_read[0] = 0
    with pytest.raises(PlanError) as exc2:
        parse_steps(text, "w")
    assert "too many step indices (at most 1000)" in checked(exc2.value)[0]
    assert tokens_read[0] <= 2 * MAX_STEPS + 2


def test_a_huge_group_with_a_late_duplicate_is_refused_at_it(tokens_read: list[int]) -> None:
    last = MAX_EXECUTIONS - 1
    with pytest.raises(PlanError) as exc:
        parse_order(f"[0-{last - 1},0]", "w")
    (line,) = checked(exc.value)
    assert line == f"w: block 0 appears twice in a parallel group at '0' (column {len(f'[0-{last - 1},') + 1})"
    assert tokens_read[0] <= 7  # [ 0 - N , 0 and a look at ]: a set, not a scan per member (that was quadratic)
    assert parse_order(f"[0-{last}]") == (Group(tuple(range(MAX_EXECUTIONS))),)


@pytest.mark.parametrize(("order", "fragment"), [
    ("9" * 5000, f"a block index must be at most {MAX_BLOCK_INDEX} at '{'9' * 200}… (5000 characters)' (column 1)"),
    ("0-" + "9" * 5000, f"at '{'9' * 200}… (5000 characters)' (column 3)"),
    ("0*" + "9" * 5000, "repeat count must be at most 1000 at"),
    ("[0,1]x" + "9" * 5000, "loop count must be at most 1000 at"),
    ("0*" + "0" * 5000, "repeat count must be at least 1 at"),
    (f"{MAX_BLOCK_INDEX + 1}", f"a block index must be at most {MAX_BLOCK_INDEX} at '{MAX_BLOCK_INDEX + 1}'"),
    ("0-9999, 0", f"too many block executions per step (at most {MAX_EXECUTIONS})"),
    ("[0-9999]x2", f"too many block executions per step (at most {MAX_EXECUTIONS}) at '2' (column 10)"),
    ("[0-4999]x2, [0-1]", f"too many block executions per step (at most {MAX_EXECUTIONS}) at '0' (column 14)"),
])
def test_long_numbers_and_budgets_are_refused_before_anything_is_built(order: str, fragment: str) -> None:
    (line,) = refused(order_text(order))
    assert line.startswith("p.toml: order.single: ") and fragment in line
    assert peak_bytes(lambda: loads(order_text(order))) < 2 << 20  # at most one group's members


def test_limits_are_inclusive() -> None:
    assert parse_order(str(MAX_BLOCK_INDEX)) == (MAX_BLOCK_INDEX,)
    assert parse_order("0" * 50 + "7") == (7,)  # leading zeros are not digits of the value
    assert len(parse_order(f"0-{MAX_EXECUTIONS - 1}")) == MAX_EXECUTIONS
    assert len(parse_order(f"0-{MAX_EXECUTIONS // 2 - 1}*2")) == MAX_EXECUTIONS
    assert parse_order(f"[0-{MAX_EXECUTIONS // 1000 - 1}]x1000") == (Group(tuple(range(10)), 1000),)
    assert parse_steps(f"0-{MAX_STEPS - 1}") == tuple(range(MAX_STEPS))
    with pytest.raises(PlanError, match=re.escape(f"too many step indices (at most {MAX_STEPS})")):
        parse_steps(f"0-{MAX_STEPS - 1},0")
    with pytest.raises(PlanError, match=f"a step index must be at most {MAX_STEPS - 1}"):
        parse_steps(f"{MAX_STEPS}")


@pytest.mark.parametrize("name", list(plan_bench.adversarial_plans()))
def test_every_adversarial_64_kib_plan_is_refused_with_bounded_memory(name: str) -> None:
    text = plan_bench.adversarial_plans()[name]
    assert len(text.encode()) <= MAX_PLAN_BYTES
    lines = refused(text)
    assert all(line.startswith("p.toml: ") for line in lines if not line.startswith("... and "))
    # At most MAX_STACKS x MAX_EXECUTIONS block indices are ever built: a few MB, whatever the numbers.
    assert peak_bytes(lambda: loads(text)) < 16 << 20


def test_many_problems_are_cut_to_a_screenful() -> None:
    text = "version = 1\n" + "".join(f"k{i} = 1\n" for i in range(500))
    lines = refused(text)
    assert len(lines) == MAX_PROBLEMS
    known = "version, model, name, note, active_steps, order, steps, uncond, extra, sampling"
    assert lines[:-1] == [f"p.toml: k{i}: unknown key (known: {known})" for i in range(MAX_PROBLEMS - 1)]
    assert lines[-1] == f"... and {500 - MAX_PROBLEMS + 1} more problems"


def test_at_most_max_stacks_orders() -> None:
    stacks = "".join(f's{i} = "0-9"\n' for i in range(MAX_STACKS))
    assert len(loads(f"version = 1\n[order]\n{stacks}").orders) == MAX_STACKS
    (line,) = refused(f'version = 1\n[order]\n{stacks}extra = "0"\n')
    assert line == f"p.toml: order: at most {MAX_STACKS} stacks, got {MAX_STACKS + 1}"


def test_at_most_max_step_tables() -> None:
    tables = "".join(f'[[steps]]\nsteps = "{i}"\n[steps.order]\n' for i in range(MAX_STEP_TABLES))
    assert len(loads(f"version = 2\n{tables}").step_orders) == MAX_STEP_TABLES
    (line,) = refused(f'version = 2\n{tables}[[steps]]\nsteps = "{MAX_STEP_TABLES}"\n[steps.order]\n')
    assert line == f"p.toml: steps: at most {MAX_STEP_TABLES} [[steps]] tables, got {MAX_STEP_TABLES + 1}"
    many = "".join(f's{i} = "0"\n' for i in range(MAX_STACKS + 1))
    (line2,) = refused(f'version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\n{many}')
    assert line2 == f"p.toml: steps[0].order: at most {MAX_STACKS} stacks, got {MAX_STACKS + 1}"


def test_all_of_a_plans_orders_together_are_held_to_the_plan_budget(tokens_read: list[int]) -> None:
    text = plan_bench.largest_valid_step_plan()
    assert len(text.encode()) == MAX_PLAN_BYTES
    plan = loads(text)
    validate(plan, FLUX)  # the largest valid version-2 plan is accepted
    assert len(plan.step_orders) == MAX_STEP_TABLES
    assert sum(executions(o) for t in plan.step_orders for _, o in t.orders) == MAX_PLAN_EXECUTIONS == 16 * MAX_EXECUTIONS
    # One execution more anywhere (here in the default order, read first) is refused at the token over it.
    more = text.replace("[order]\n", '[order]\nsingle = "0"\n', 1)
    more = more[: MAX_PLAN_BYTES - 1] + "\n"  # the padding comment one line shorter
    # The last table's single order, "0-31*25" (800), finds 799 left: refused at its count.
    assert refused(more) == ["p.toml: steps[99].order.single: too many block executions in all the plan's orders "
                             f"together (at most {MAX_PLAN_EXECUTIONS}) at '25' (column 6)"]
    # A version-1 plan cannot write more than the budget: 16 stacks of MAX_EXECUTIONS is exactly it.
    stacks = "".join(f's{i} = "0-{MAX_EXECUTIONS - 1}"\n' for i in range(MAX_STACKS))
    assert len(loads(f"version = 1\n[order]\n{stacks}").orders) == MAX_STACKS
    # Past the budget nothing more is built: each further order is refused at its first block.
    tokens_read[0] = 0
    over = "".join(f'[[steps]]\nsteps = "{i}"\n[steps.order]\n{stacks}' for i in range(3))
    lines = refused(f"version = 2\n[order]\n{over}")  # 2 x 16 problems, cut to a screenful
    assert lines[0].startswith("p.toml: steps[1].order.s0: too many block executions in all the plan's orders")
    assert lines[-1] == f"... and {2 * MAX_STACKS - MAX_PROBLEMS + 1} more problems"
    assert tokens_read[0] <= 3 * MAX_STACKS * 4 + 3  # "0 - 9999" read, refused at once; and each table's step


# ---------------------------------------------------------- item 13: other exceptions, one line each


@pytest.mark.parametrize(("text", "line"), [
    ("version = " + "9" * 5000 + "\n", "p.toml: not valid TOML: a number too long to read"),
    ("version = 1\n[sampling]\nseed = " + "9" * 4300 + "\n",
     f"p.toml: sampling.seed: must be in 0..2**63-1 at '{'9' * 200}… (4300 characters)'"),
    ("version = 1\nname = " + "[" * 5000 + "]" * 5000 + "\n", "p.toml: not a plan: arrays or tables nested too deeply"),
    ("version = 1\nname = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n",
     "p.toml: not a plan: arrays or tables nested too deeply"),
    ("version = 1\n" + "[a]\n" * 2, None),  # a TOML error: the parser's own words
    ('version = "1"\n', "p.toml: version: must be the integer 1 or 2, got the string '1'"),
    ("version = 1.0\n", "p.toml: version: must be the integer 1 or 2, got the float '1.0'"),
    ("version = true\n", "p.toml: version: must be the integer 1 or 2, got the boolean 'true'"),
    ("version = [1]\n", "p.toml: version: must be the integer 1 or 2, got an array '[1]'"),
    ("version = 1979-05-27\n", "p.toml: version: must be the integer 1 or 2, got the date/time '1979-05-27'"),
    ("version = 3\n", "p.toml: version: unsupported version at '3' (this dit-explore reads version = 1 or 2)"),
])
def test_other_failures_are_one_plan_error_line(text: str, line: str | None) -> None:
    (got,) = refused(text)
    assert got == line if line is not None else got.startswith("p.toml: not valid TOML: ")


def test_a_plan_of_nested_arrays_within_the_limit_is_read() -> None:
    (line,) = refused("version = 1\nname = " + "[" * 50 + "]" * 50 + "\n")
    assert line == f"p.toml: name: expected a string, got an array '{'[' * 50}{']' * 50}'"


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.plan.toml"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_blocking(fifo: Path) -> None:
    with pytest.raises(PlanError) as exc:
        in_thread(lambda: load(fifo), fifo)
    assert checked(exc.value) == [f"{fifo}: not a regular file (a FIFO)"]
    png = fifo.with_name("pipe.png")
    os.mkfifo(png)
    with pytest.raises(PlanError) as exc2:
        in_thread(lambda: load(png), png)
    assert checked(exc2.value) == [f"{png}: not a regular file (a FIFO)"]


@pytest.mark.parametrize(("path", "what"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_a_device_is_refused_unread(path: str, what: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"no {path} here")
    with pytest.raises(PlanError) as exc:
        load(path)
    assert checked(exc.value) == [f"{path}: not a regular file ({what})"]


def test_folders_sockets_and_oversized_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as exc:
        load(tmp_path)
    assert checked(exc.value) == [f"{tmp_path}: not a regular file (a folder)"]

    sock_path = tmp_path / "s.plan.toml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(PlanError) as exc2:
            load(sock_path)
    assert checked(exc2.value) == [f"{sock_path}: not a regular file (a socket)"]

    big = tmp_path / "big.plan.toml"
    big.write_bytes(b"#" * (10 << 20))
    with pytest.raises(PlanError) as exc3:
        load(big)
    assert checked(exc3.value) == [f"{big}: {10 << 20} bytes; plan files are at most {MAX_PLAN_BYTES} bytes"]

    latin = tmp_path / "latin.plan.toml"
    latin.write_bytes(b"version = 1\nname = '\xe9'\n")
    with pytest.raises(PlanError) as exc4:
        load(latin)
    assert checked(exc4.value) == [f"{latin}: not UTF-8 text (byte 20 is 0xe9)"]


def _png(path: Path, text: str | None, zip_text: bool = False) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if text is not None:
        info.add_itxt(PNG_PLAN_KEY, text, zip=zip_text)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def test_png_plan_chunks_are_held_to_the_plan_limit(tmp_path: Path) -> None:
    text = plan_bench.largest_valid_plan()
    assert load(_png(tmp_path / "ok.png", text)) == loads(text)
    steps = plan_bench.largest_valid_step_plan()
    assert load(_png(tmp_path / "steps.png", steps)) == loads(steps)
    over = text + "#"
    png = _png(tmp_path / "over.png", over)
    with pytest.raises(PlanError) as exc:
        load(png)
    assert checked(exc.value) == [f"{png}: {MAX_PLAN_BYTES + 1} bytes; plans are at most {MAX_PLAN_BYTES} bytes"]
    # A compressed chunk that inflates past Pillow's own text limit: its ValueError is one line too.
    bomb = _png(tmp_path / "bomb.png", "#" * (2 << 20), zip_text=True)
    with pytest.raises(PlanError) as exc2:
        load(bomb)
    (line,) = checked(exc2.value)
    assert line.startswith(f"{bomb}: cannot read image: ")


def test_a_png_over_its_limit_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = _png(tmp_path / "img.png", dumps(Plan(name="x")))
    monkeypatch.setattr(plan_mod, "MAX_PNG_BYTES", png.stat().st_size - 1)
    with pytest.raises(PlanError) as exc:
        load(png)
    assert checked(exc.value) == [f"{png}: {png.stat().st_size} bytes; PNGs read as plans are at most "
                                  f"{png.stat().st_size - 1} bytes"]


# --------------------------------------------------- item 14: echoed values are escaped and cut


@pytest.mark.parametrize(("text", "fragment"), [
    ('version = "1\\n2"\n', "version: must be the integer 1 or 2, got the string '1\\n2'"),
    ('version = 1\n"\\u001b]0;pwned\\u0007" = 1\n', "p.toml: \\x1b]0;pwned\\x07: unknown key"),
    ('version = 1\nname = ["\\u001b[31m"]\n', "name: expected a string, got an array '['\\x1b[31m']'"),
    ('version = 1\n[order]\nsingle = "0,\\u001b[2J"\n', "order.single: syntax error at '\\x1b' (column 3)"),
    ('version = 1\n[order]\n"a\\u0007b" = "0"\n[sampling]\n"c\\nd" = 1\n', "sampling.c\\nd: unknown key"),
    ('version = 1\n[sampling]\nprompt = ["\\u009b2J"]\n', "sampling.prompt: wrong type at an array '['\\x9b2J']'"),
    ('version = 1\n[sampling]\nseed = "' + "\\u001b" * 3000 + '"\n',
     "sampling.seed: wrong type at the string '" + "\\x1b" * 50),
])
def test_control_characters_never_reach_the_terminal(text: str, fragment: str) -> None:
    lines = refused(text)  # printable lines, each cut
    assert any(fragment in line for line in lines), lines


def test_an_unknown_stack_name_is_echoed_escaped_and_cut() -> None:
    plan = loads('version = 1\n[order]\n"\\u001b' + "s" * 5000 + '" = "0"\n')
    with pytest.raises(PlanError) as exc:
        validate(plan, FLUX, source="p.toml")
    (line,) = checked(exc.value)
    assert line.startswith("p.toml: order.\\x1bsss") and "… (5004 characters)" in line  # counted escaped


# ------------------------------------------------------------- item 15: names and notes are capped


@pytest.mark.parametrize(("key", "cap"), [("name", MAX_NAME), ("model", MAX_NAME), ("note", MAX_NOTE)])
def test_names_notes_and_models_are_capped(key: str, cap: int) -> None:
    assert getattr(loads(f'version = 1\n{key} = "{"a" * cap}"\n'), key) == "a" * cap
    (line,) = refused(f'version = 1\n{key} = "{"a" * (cap + 1)}"\n')
    assert line == f"p.toml: {key}: at most {cap} characters, got {cap + 1}"


def test_a_two_megabyte_name_is_refused_on_size() -> None:
    text = f'version = 1\nname = "{"n" * (2 << 20)}"\n'
    (line,) = refused(text)
    assert line == f"p.toml: {len(text)} bytes; plans are at most {MAX_PLAN_BYTES} bytes"
