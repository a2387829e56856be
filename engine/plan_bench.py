"""How long the plan loader takes on the worst plan files it can be handed (BENCHMARKS.md, "Plan parser bounds").

Every plan text is at most `MAX_PLAN_BYTES` (64 KiB): a larger one is refused on its size alone. Within
that size the loader's work is bounded by the length of the text, never by the numbers in it. This
module builds the largest valid plan (accepted and checked against FLUX's layout) and the adversarial
plans the hardening work found or fears (huge ranges, "0,0,0,…", deep nesting, long numbers, many
groups, many problems), each padded to exactly 64 KiB, and times `loads` on each: the median of
several runs, in one process.

    python -m dit_explore.engine.plan_bench [--runs 7]

Torch-free; the tests (tests/engine/test_plan_limits.py) use the same texts to assert the bounds as
counts (tokens read, ints built, bytes allocated), never as times.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.layout import Layout, Stack

LIMIT = plans.MAX_PLAN_BYTES
FLUX = Layout("flux", (Stack("double", "transformer_blocks", 19), Stack("single", "single_transformer_blocks", 38)))


def fill(head: str, unit: str, tail: str = "", limit: int = LIMIT) -> str:
    """`head` + as many `unit`s as fit + `tail`, at most `limit` UTF-8 bytes (ASCII units)."""
    room = limit - len((head + tail).encode())
    return head + unit * (room // len(unit)) + tail


def pad(text: str, limit: int = LIMIT) -> str:
    """`text` followed by a comment line that makes it exactly `limit` bytes."""
    room = limit - len(text.encode()) - len("#\n")
    if room < 0:
        raise ValueError(f"{len(text.encode())} bytes already")
    return text + "#" + "x" * room + "\n"


def lines(head: str, line: Callable[[int], str], tail: str = "", limit: int = LIMIT) -> str:
    """`head` + line(0) + line(1) + ... (whole lines, as many as fit) + `tail`, at most `limit` bytes."""
    out, size, i = [head], len((head + tail).encode()), 0
    while size + len(line(i).encode()) <= limit:
        out.append(line(i))
        size += len(line(i).encode())
        i += 1
    return "".join(out) + tail


def largest_valid_plan() -> str:
    """A plan that is accepted and fits FLUX, of exactly 64 KiB, with the most parsing work in it: every
    text field at its cap, both stacks at MAX_EXECUTIONS written one block at a time, 500 active steps."""
    orders = {name: ",".join(str(i % 2) for i in range(plans.MAX_EXECUTIONS)) for name in ("double", "single")}
    text = (
        "version = 1\n"
        f'model = "{"m" * plans.MAX_NAME}"\n'
        f'name = "{"n" * plans.MAX_NAME}"\n'
        f'note = "{"t" * plans.MAX_NOTE}"\n'
        f'active_steps = "{",".join(str(s) for s in range(0, 1000, 2))}"\n'
        "[order]\n" + "".join(f'{name} = "{order}"\n' for name, order in orders.items())
        + f'[sampling]\nprompt = "{"p" * 8000}"\nseed = 5\nsteps = 1000\nwidth = 1024\nheight = 1024\nguidance = 3.5\n'
    )
    return pad(text)


def largest_valid_step_plan() -> str:
    """A version-2 plan that is accepted and fits FLUX, of exactly 64 KiB: MAX_STEP_TABLES tables over
    MAX_STEPS steps, their orders together at exactly MAX_PLAN_EXECUTIONS (one execution more is refused)."""
    tables = plans.MAX_STEP_TABLES
    per_order = plans.MAX_PLAN_EXECUTIONS // (2 * tables)  # a double and a single order in each table
    steps = plans.MAX_STEPS // tables
    orders = {name: f"0-{n - 1}*{per_order // n}" for name, n in (("double", 16), ("single", 32))}
    assert all(per_order % n == 0 for n in (16, 32)) and plans.MAX_PLAN_EXECUTIONS % (2 * tables) == 0
    text = (
        "version = 2\n"
        f'model = "{"m" * plans.MAX_NAME}"\n'
        f'name = "{"n" * plans.MAX_NAME}"\n'
        f'note = "{"t" * plans.MAX_NOTE}"\n'
        "[order]\n" + "".join(
            f'[[steps]]\nsteps = "{i * steps}-{i * steps + steps - 1}"\n[steps.order]\n'
            + "".join(f'{name} = "{order}"\n' for name, order in orders.items())
            for i in range(tables))
        + f'[sampling]\nprompt = "{"p" * 8000}"\nseed = 5\nsteps = 1000\nwidth = 1024\nheight = 1024\nguidance = 3.5\n'
    )
    return pad(text)


def adversarial_plans() -> dict[str, str]:
    """Plans of exactly 64 KiB (or just under) that must be refused, each with one PlanError."""
    v, v2 = "version = 1\n", "version = 2\n"
    stacks = [f"s{i}" for i in range(plans.MAX_STACKS)]
    return {
        # the issue's own inputs, padded to the limit
        "huge range 0-99999999": pad(v + '[order]\nsingle = "0-99999999"\n'),
        "huge group [0-30000]": pad(v + '[order]\nsingle = "[0-30000]"\n'),
        "active_steps 0-200000000": pad(v + 'active_steps = "0-200000000"\n'),
        "0,0,0,… order": fill(v + '[order]\nsingle = "0', ",0", '"\n'),
        "0,0,0,… active_steps": fill(v + 'active_steps = "0', ",0", '"\n'),
        "64 KiB index": fill(v + '[order]\nsingle = "', "9", '"\n'),
        "64 KiB TOML integer": fill("version = ", "9", "\n"),
        "nested arrays": fill(v + "name = ", "[", ""),
        "nested inline tables": fill(v + "name = ", "{a=", ""),
        # the most work the budgets allow before a refusal
        "16 stacks of 10000, then a bad version": pad("version = 3\n[order]\n"
                                                      + "".join(f's{i} = "0-{plans.MAX_EXECUTIONS - 1}"\n' for i in range(16))),
        "16 stacks of 10000-member groups, bad version": pad("version = 3\n[order]\n" + "".join(
            f'{s} = "[0-{plans.MAX_EXECUTIONS - 1}]"\n' for s in stacks)),
        "repeat over budget in every stack": pad(v + "[order]\n" + "".join(
            f'{s} = "0-9999, 0-9999*1000"\n' for s in stacks)),
        "duplicate at the end of a 10000 group": pad(v + f'[order]\nsingle = "[0-{plans.MAX_EXECUTIONS - 2},0]"\n'),
        "many groups [0,1],[0,1],…": fill(v + '[order]\nsingle = "[0,1]', ",[0,1]", '"\n'),
        "many stacks (17+)": lines(v + "[order]\n", lambda i: f's{i} = "0-9999"\n'),
        "many unknown keys (problems)": lines(v, lambda i: f"k{i} = 1\n"),
        "many [tables]": lines(v, lambda i: f"[t{i}]\n"),
        "escapes in a long name": fill(v + 'name = "', "\\u0041", '"\n'),
        # version 2: [[steps]] tables
        "101 [[steps]] tables": pad(v2 + "".join(f'[[steps]]\nsteps = "{i}"\n[steps.order]\n' for i in range(101))),
        "100 tables x 16 stacks of 10000 (plan budget)": pad(v2 + "".join(
            f'[[steps]]\nsteps = "{i}"\n[steps.order]\n' + "".join(f's{k} = "0-9999"\n' for k in range(16))
            for i in range(plans.MAX_STEP_TABLES))),
        "100 overlapping tables of every step": pad(v2 + "".join(
            f'[[steps]]\nsteps = "0-{plans.MAX_STEPS - 1}"\n[steps.order]\nsingle = "0"\n'
            for _ in range(plans.MAX_STEP_TABLES))),
        "0,0,0,… steps of a table": fill(v2 + '[[steps]]\nsteps = "0', ",0", '"\n[steps.order]\n'),
        "[[steps]] in a version 1 plan": pad(v + "".join(f'[[steps]]\nsteps = "{i}"\n[steps.order]\nsingle = "0-9999"\n'
                                                         for i in range(plans.MAX_STEP_TABLES))),
        "many unknown keys in a [[steps]] table": lines(v2 + '[[steps]]\nsteps = "0"\n', lambda i: f"k{i} = 1\n",
                                                                   "[steps.order]\n"),
    }


def _one(text: str) -> str:
    """'accepted' or 'refused' (a PlanError); anything else escapes, as it should in a benchmark."""
    try:
        plan = plans.loads(text, "bench.plan.toml")
        plans.validate(plan, FLUX, source="bench.plan.toml")
    except plans.PlanError:
        return "refused"
    return "accepted"


def time_it(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.engine.plan_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each plan; the median is reported")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)
    cases = {"largest valid plan (accepted)": largest_valid_plan(),
             "largest valid plan with [[steps]] (accepted)": largest_valid_step_plan(), **adversarial_plans(),
             "10 MB 0,0,0,… (over the limit)": '[order]\nsingle = "' + "0," * 5_000_000 + '0"\n'}
    rows = []
    for name, text in cases.items():
        outcome = _one(text)
        seconds = time_it(functools.partial(_one, text), args.runs)
        rows.append({"plan": name, "bytes": len(text.encode()), "outcome": outcome, "median_ms": round(seconds * 1e3, 2)})
    if args.json:
        print(json.dumps({"python": platform.python_version(), "machine": platform.machine(), "runs": args.runs,
                          "rows": rows}, indent=1))
        return 0
    print(f"python {platform.python_version()} on {platform.machine()}, median of {args.runs} runs")
    print(f"| {'plan':<48} |    bytes | outcome  | median ms |")
    print(f"|{'-' * 50}|---------:|----------|----------:|")
    for row in rows:
        print(f"| {row['plan']:<48} | {row['bytes']:>8} | {row['outcome']:<8} | {row['median_ms']:>9.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
