"""Execution plans: the order language, its canonical form, plan files, and validation against a layout.

A plan says, for each block stack, which blocks run and in which order. Every strategy of "Transformer
Layers as Painters" is such an order: skip ("0-9,20-37"), middle repeat ("15*19"), reverse ("28-10"),
parallel ("[10-28]") and looped parallel ("[10-28]x3"). Plans are immutable values, so the TUI can keep
them on an undo stack and both processes can compare them.

Torch-free: shared by the TUI and the engine process.

Grammar (whitespace is ignored)::

    order := "" | item ("," item)*
    item  := span ("*" INT)? | "[" span ("," span)* "]" ("x" INT)?
    span  := INT | INT "-" INT          (descending spans run in reverse)

A plan may also give other orders for some denoising steps (version-2 files, `[[steps]]` tables): see
`StepTable`. A plan without step tables is written as version 1, byte for byte as before version 2.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.text import escape_controls, shown
from dit_explore.engine.core.userfiles import UserFileError, finite_number, open_user_file, read_user_text

T = TypeVar("T")
PLAN_VERSION = 2  # the newest plan file version read and written (2 only for plans with [[steps]] tables)
PLAN_VERSIONS = (1, 2)  # the versions read
PLAN_SUFFIX = ".plan.toml"
PNG_PLAN_KEY = "dit-explore"  # PNG text chunk holding the plan file of the image
MAX_COUNT = 1000  # largest "*N" / "xK"
MAX_EXECUTIONS = 10_000  # block executions per stack per step; beyond this a typo, not an experiment
MAX_STEPS = 1000  # denoising steps of one image: flow models converge in 4-50; 10000 ran 227 s without a word
MAX_SIDE = 16384  # pixels of a width or height, for every family (an architecture may allow fewer)
MAX_PROMPT = 10_000  # characters of one prompt: the text encoders read at most 512 tokens of it
MAX_PLAN_BYTES = 64 * 1024  # a plan file (or a PNG's plan chunk): refused on size alone beyond this
MAX_PNG_BYTES = 256 << 20  # a PNG replayed as a plan (its plan chunk is still at most MAX_PLAN_BYTES)
MAX_BLOCK_INDEX = 9999  # no stack has 10000 blocks; a longer number is refused before it is converted
MAX_STACKS = 16  # [order] entries of one plan (a family has at most a few stacks), and of each [steps.order]
MAX_STEP_TABLES = 100  # [[steps]] tables of one plan: a different order on each of 100 step sets is plenty
MAX_PLAN_EXECUTIONS = MAX_STACKS * MAX_EXECUTIONS  # block executions per step written in all of a plan's orders
MAX_NAME = 200  # characters of a plan's name and of its model field
MAX_NOTE = 4000  # characters of a plan's note
MAX_PROBLEMS = 20  # problem lines of one PlanError; the rest are counted on the last line


class PlanError(ValueError):
    """Bad plan input. Each line of the message is one problem naming the file, the key and the token."""

    def __init__(self, problems: Iterable[str]) -> None:
        # A line never holds a raw control character (a newline would make two problems of one, an ESC
        # would reach the terminal), and a flood of problems is cut to a screenful.
        lines = [escape_controls(line) for line in problems]
        if len(lines) > MAX_PROBLEMS:
            lines = [*lines[:MAX_PROBLEMS - 1], f"... and {len(lines) - MAX_PROBLEMS + 1} more problems"]
        self.problems = lines
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Group:
    """Parallel blocks: each gets the same input, their outputs are averaged; repeated `loops` times."""

    members: tuple[int, ...]  # sorted, distinct, at least two
    loops: int = 1


CACHE_MODES = ("reuse", "forecast")


@dataclass(frozen=True)
class Cached:
    """A span of blocks, first..last ascending, whose contribution is taken from earlier steps instead of
    being computed: `reuse` adds the residual (output minus input, per stream) of the last step on which
    this span occurrence was computed; `forecast` extrapolates it to first order from the last two such
    steps (one only: reuse). The run's first step always computes it, and so does any step whose order
    runs the same blocks plainly (that records the residual)."""

    first: int
    last: int
    mode: str  # one of CACHE_MODES

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(range(self.first, self.last + 1))


Unit = int | Group | Cached  # one entry of an order: a block index, a parallel group, a cached span
Order = tuple[Unit, ...]
CacheKey = tuple[str, int, int, int]  # (stack, first, last, occurrence): one cached span's residuals


@dataclass(frozen=True)
class Sampling:
    """Optional sampling defaults stored with a plan; command-line flags override them."""

    prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    guidance: float | None = None

    def merged(self, override: Sampling) -> Sampling:
        """`override`'s fields where set, ours elsewhere."""
        return Sampling(**{k: (v if v is not None else getattr(self, k)) for k, v in asdict(override).items()})


def _order_of(orders: tuple[tuple[str, Order], ...], stack: str) -> Order | None:
    for name, order in orders:
        if name == stack:
            return order
    return None


def _resolved(orders: tuple[tuple[str, Order], ...], layout: Layout) -> dict[str, Order]:
    """Every stack of `layout` with its order in `orders`, the identity where they do not name it."""
    out = {}
    for s in layout.stacks:
        order = _order_of(orders, s.name)
        out[s.name] = identity_order(s.blocks) if order is None else order  # () runs no block
    return out


@dataclass(frozen=True)
class StepTable:
    """Other orders for some denoising steps (a `[[steps]]` table of a version-2 plan file). On its steps,
    each stack it names runs the order given here and every other stack runs the plan's default order;
    a table that names no stack runs the full model on its steps."""

    steps: tuple[int, ...]  # sorted, distinct, at least one; no step is in two tables of a plan
    orders: tuple[tuple[str, Order], ...] = ()  # (stack name, order), sorted by stack name

    def order(self, stack: str) -> Order | None:
        return _order_of(self.orders, stack)


BRANCHES = ("uncond", "extra")  # the guidance-branch tables of a version-2 plan file
MAX_BRANCH_SCALE = 100.0  # |scale| of an extra guidance pass (SD3.5's Skip Layer Guidance uses 2.8)


@dataclass(frozen=True)
class Branch:
    """A plan for one pass of classifier-free guidance (an `[uncond]` or `[extra]` table of a version-2
    plan file). The pipelines of CFG families run the unconditional and the conditional pass as one batch;
    the plan's own orders ([order], [[steps]]) run on both. `[uncond]` gives the unconditional pass other
    orders on its steps (the batch is split there); `[extra]` adds a pass on the conditional inputs with
    its orders and a `scale`: the guided prediction gains scale x (conditional - extra), Skip Layer
    Guidance's formula. A stack the branch does not name runs unchanged in that pass."""

    orders: tuple[tuple[str, Order], ...] = ()  # (stack name, order), sorted by stack name
    steps: tuple[int, ...] | None = None  # sorted, distinct; None = every step
    scale: float | None = None  # the extra pass's; None for [uncond]

    def order(self, stack: str) -> Order | None:
        return _order_of(self.orders, stack)

    def resolved(self, layout: Layout) -> dict[str, Order]:
        """Every stack of `layout` with the order this pass runs (the identity where the branch is silent)."""
        return _resolved(self.orders, layout)

    def applies_at(self, step: int) -> bool:
        return self.steps is None or step in self.steps


@dataclass(frozen=True)
class Plan:
    # The default order: (stack name, order), sorted by stack name; a stack not listed runs unchanged.
    orders: tuple[tuple[str, Order], ...] = ()
    active_steps: tuple[int, ...] | None = None  # sorted, distinct; None = every step
    model: str | None = None
    name: str | None = None
    note: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    # Orders for some steps, sorted by first step. A plan has either these or active_steps, never both
    # (validate and the loader refuse both; resolved_at reads active_steps first).
    step_orders: tuple[StepTable, ...] = ()
    # Guidance-branch plans (CFG families only): the unconditional pass's own orders, an extra pass.
    uncond: Branch | None = None
    extra: Branch | None = None

    @property
    def has_branches(self) -> bool:
        return self.uncond is not None or self.extra is not None

    @property
    def branches(self) -> tuple[tuple[str, Branch], ...]:
        """The guidance branches the plan has, by table name: ("uncond", ...), then ("extra", ...)."""
        return tuple((name, b) for name, b in (("uncond", self.uncond), ("extra", self.extra)) if b is not None)

    def order(self, stack: str) -> Order | None:
        """`stack`'s default order (None: the stack runs unchanged where no step table says otherwise)."""
        return _order_of(self.orders, stack)

    def with_order(self, stack: str, order: Order | None) -> Plan:
        """A copy with `stack`'s order replaced (None removes it: the stack runs unchanged)."""
        rest = [(n, o) for n, o in self.orders if n != stack]
        if order is not None:
            rest.append((stack, tuple(order)))
        return replace(self, orders=tuple(sorted(rest, key=lambda item: item[0])))

    def resolved(self, layout: Layout) -> dict[str, Order]:
        """Every stack of `layout` with its default order (the identity where the plan is silent): what
        runs on the steps no step table covers."""
        return _resolved(self.orders, layout)

    def table_at(self, step: int) -> int | None:
        """The position in step_orders of the table covering denoising step `step`, if any."""
        return next((i for i, table in enumerate(self.step_orders) if step in table.steps), None)

    def variant_at(self, step: int) -> tuple[bool, int | None]:
        """Which of the plan's sets of orders runs at `step`, as a key that is equal for two steps exactly
        when they run the same set by the same rule (whether the plan applies, and the covering table):
        what the executor and the cost count group steps by without comparing orders."""
        return (True, self.table_at(step)) if self.applies_at(step) else (False, None)

    def resolved_at(self, layout: Layout, step: int) -> dict[str, Order]:
        """Every stack of `layout` with the order it runs at denoising step `step` (0-based): the full
        model where active_steps leaves the step out or a step table naming no stack covers it; else a
        covering table's order for each stack it names and the default order for the others."""
        if not self.applies_at(step):
            return {s.name: identity_order(s.blocks) for s in layout.stacks}
        default = self.resolved(layout)
        at = self.table_at(step)
        if at is None:
            return default
        table = self.step_orders[at]
        if not table.orders:
            return {s.name: identity_order(s.blocks) for s in layout.stacks}
        own = dict(table.orders)
        return {name: own.get(name, order) for name, order in default.items()}

    def is_identity(self, layout: Layout) -> bool:
        """Whether every step runs the full model (an extra guidance pass never does: it adds a pass)."""
        branches = () if self.uncond is None else (self.uncond.orders,)
        return self.extra is None and all(
            order == identity_order(layout.stack(name).blocks)
            for orders in (self.orders, *(t.orders for t in self.step_orders), *branches) for name, order in orders)

    def applies_at(self, step: int) -> bool:
        return self.active_steps is None or step in self.active_steps


def identity_order(blocks: int) -> Order:
    return tuple(range(blocks))


def executions(order: Order, computing: bool = False) -> int:
    """Block executions one pass over `order` costs: a cached span costs nothing, unless `computing` (the
    run's first step, where it computes)."""
    return sum(1 if isinstance(u, int) else (len(u.blocks) if computing else 0) if isinstance(u, Cached)
               else len(u.members) * u.loops for u in order)


def blocks_in(order: Order) -> Iterator[int]:
    for unit in order:
        if isinstance(unit, int):
            yield unit
        elif isinstance(unit, Cached):
            yield from unit.blocks
        else:
            yield from unit.members


def computing(order: Order) -> Order:
    """`order` with its cached spans run plainly: what it computes on the run's first step."""
    return tuple(u for unit in order for u in (unit.blocks if isinstance(unit, Cached) else (unit,)))


def has_cached(plan: Plan) -> bool:
    """Whether any order of `plan` has a cached span (such a plan is written as version 2)."""
    return any(isinstance(u, Cached) for orders in (plan.orders, *(t.orders for t in plan.step_orders))
               for _, order in orders for u in order)


def cache_slots(stack: str, order: Order, keys: frozenset[CacheKey] | None = None) -> list[tuple[int, int, CacheKey]]:
    """Where `order` holds the cached spans of `stack`, as (position of the first unit, units spanned, key).
    A cached span is one unit; with `keys` (the plan's cached spans), so is each plain run of exactly a
    key's blocks, ascending (it computes that span on its step, recording its residual). The k-th
    occurrence in the order of a span's bounds, cached or plain, is occurrence k of that key."""
    starts: dict[int, list[tuple[int, int]]] = {}  # first block -> the keys' bounds starting there, longest first
    for first, last in sorted({(k[1], k[2]) for k in keys or () if k[0] == stack}, key=lambda b: b[0] - b[1]):
        starts.setdefault(first, []).append((first, last))
    seen: dict[tuple[int, int], int] = {}
    out: list[tuple[int, int, CacheKey]] = []
    i = 0
    while i < len(order):
        unit = order[i]
        width, bounds = 1, None
        if isinstance(unit, Cached):
            bounds = (unit.first, unit.last)
        elif isinstance(unit, int):
            for first, last in starts.get(unit, ()):
                n = last - first + 1
                if i + n <= len(order) and all(order[i + j] == first + j for j in range(n)):
                    width, bounds = n, (first, last)
                    break
        if bounds is not None:
            k = seen.get(bounds, 0)
            seen[bounds] = k + 1
            key = (stack, bounds[0], bounds[1], k)
            if keys is None or key in keys or isinstance(unit, Cached):
                out.append((i, width, key))
        i += width
    return out


def cache_keys(plan: Plan) -> frozenset[CacheKey]:
    """The cached spans of every order of `plan`."""
    keys: set[CacheKey] = set()
    for orders in (plan.orders, *(t.orders for t in plan.step_orders)):
        for stack, order in orders:
            keys.update(key for at, _, key in cache_slots(stack, order) if isinstance(order[at], Cached))
    return frozenset(keys)


# ---------------------------------------------------------------------------------------------- parsing


class _Token(NamedTuple):
    kind: str  # "int" or the punctuation character itself
    text: str
    column: int  # 1-based, in the string as written


# ASCII digits, punctuation (and "@word", a cached span's mode), whitespace (as str.isspace() has it), anything else
_TOKEN = re.compile(r"([0-9]+)|(@[A-Za-z]{0,16}|[-,*\[\]x])|(\s+)|(.)", re.DOTALL)


def _tokenize(text: str, where: str) -> Iterator[_Token]:
    """The tokens of `text`, lazily: a parser that refuses early reads no further."""
    for match in _TOKEN.finditer(text):
        kind = match.lastindex
        if kind == 3:
            continue
        if kind == 4:
            raise PlanError([f"{where}: syntax error at '{shown(match.group())}' (column {match.start() + 1}): "
                             "unexpected character"])
        text = match.group()
        yield _Token("int" if kind == 1 else "@" if text[0] == "@" else text, text, match.start() + 1)


class _Parser:
    """Recursive descent over the tokens of one order string; errors name the offending token.

    The work is bounded by the length of the text, never by the numbers in it: an index is at most
    `max_index` (a longer digit string is refused before int() sees it), span lengths are computed
    arithmetically, and every element is paid for from `budget` before it is materialized, so
    "0-99999999" or "0-37*1000" is refused having built nothing."""

    def __init__(self, text: str, where: str, *, index: str, max_index: int, budget: int, over_budget: str) -> None:
        self.where = where
        self.tokens = _tokenize(text, where)
        self.next = next(self.tokens, None)
        self.index = index  # "block index", "step index"
        self.max_index = max_index
        self.budget = budget  # elements (block executions, step indices) still allowed
        self.over_budget = over_budget

    def error(self, message: str, token: _Token | None = None) -> PlanError:
        token = token or self.peek()
        at = f"'{shown(token.text)}' (column {token.column})" if token else "end of text"
        return PlanError([f"{self.where}: {message} at {at}"])

    def spend(self, n: int, token: _Token) -> None:
        """Pay for `n` more elements, or refuse at `token`."""
        self.budget -= n
        if self.budget < 0:
            raise self.error(self.over_budget, token)

    def number(self, token: _Token, cap: int, what: str) -> int:
        digits = token.text.lstrip("0")
        if len(digits) > len(str(cap)) or int(digits or "0") > cap:
            raise self.error(f"{what} must be at most {cap}", token)
        return int(digits or "0")

    def peek(self) -> _Token | None:
        return self.next

    def take(self, kind: str, what: str) -> _Token:
        token = self.peek()
        if token is None or token.kind != kind:
            raise self.error(f"syntax error: expected {what}")
        self.next = next(self.tokens, None)
        return token

    def accept(self, kind: str) -> _Token | None:
        token = self.peek()
        if token is not None and token.kind == kind:
            self.next = next(self.tokens, None)
            return token
        return None

    def count(self, what: str) -> int:
        token = self.take("int", f"a {what} count")
        value = self.number(token, MAX_COUNT, f"{what} count")
        if value < 1:
            raise self.error(f"{what} count must be at least 1", token)
        return value

    def bounds(self) -> tuple[int, int, _Token]:
        """`INT ("-" INT)?` as (first, last, its first token): nothing materialized yet."""
        start = self.take("int", f"a {self.index}")
        first = self.number(start, self.max_index, f"a {self.index}")
        if self.accept("-") is None:
            return first, first, start
        last = self.number(self.take("int", "the end of a range"), self.max_index, f"a {self.index}")
        return first, last, start

    def span(self) -> list[int]:
        """A span as its indices, paid for first."""
        first, last, start = self.bounds()
        self.spend(abs(last - first) + 1, start)
        return _span(first, last)

    def comma_list(self, element: Callable[[], list[T]]) -> list[T]:
        """`element ("," element)*` up to the end of the text."""
        out: list[T] = []
        while True:
            out.extend(element())
            if self.accept(",") is None:
                break
        if self.peek() is not None:
            raise self.error("syntax error: expected ',' or the end")
        return out

    def order(self) -> list[Unit]:
        return [] if self.peek() is None else self.comma_list(self.item)

    def item(self) -> list[Unit]:
        bracket = self.accept("[")
        if bracket is None:
            first, last, start = self.bounds()
            length = abs(last - first) + 1
            self.spend(length, start)
            mode = self.accept("@")
            if mode is not None:
                return [self.cached(first, last, start, mode)]
            star = self.accept("*")
            if star is not None:
                token = self.peek()
                times = self.count("repeat")
                assert token is not None
                self.spend(length * (times - 1), token)
            else:
                times = 1
            return cast(list[Unit], _span(first, last)) * times
        members: list[int] = []
        seen: set[int] = set()
        while True:
            at = self.peek()
            span = self.span()
            if (mode := self.peek()) is not None and mode.kind == "@":
                raise self.error(f"{mode.text} cannot be inside a parallel group (a cached span is plain blocks)")
            for b in span:  # each member paid for once here, its further loops below
                if b in seen:
                    raise self.error(f"block {b} appears twice in a parallel group", at)
                seen.add(b)
                members.append(b)
            if self.accept(",") is None:
                break
        self.take("]", "']' closing the parallel group")
        loops = 1
        if self.accept("x") is not None:
            token = self.peek()
            loops = self.count("loop")
            assert token is not None
            self.spend(len(members) * (loops - 1), token)
        if len(members) == 1:  # the average of one block is that block
            return [members[0]] * loops
        return [Group(tuple(sorted(members)), loops)]


    def cached(self, first: int, last: int, start: _Token, mode: _Token) -> Cached:
        """The rest of `first-last@mode`: a known mode, an ascending span, not repeated."""
        name = mode.text[1:]
        if name not in CACHE_MODES:
            raise self.error(f"unknown mode '{shown(mode.text)}' (a span is marked @reuse or @forecast)", mode)
        if last < first:
            raise self.error(f"@{name} needs an ascending span (a reversed span is computed, not cached)", start)
        star = self.peek()
        if star is not None and star.kind == "*":
            raise self.error(f"a @{name} span cannot be repeated (each pass would need residuals of its own)", star)
        return Cached(first, last, name)


def _span(first: int, last: int) -> list[int]:
    """first..last inclusive, descending when last < first."""
    step = 1 if last >= first else -1
    return list(range(first, last + step, step))


def _normalize(units: list[Unit]) -> Order:
    """Merge back-to-back copies of one group into a single looped group (same computation)."""
    out: list[Unit] = []
    for unit in units:
        prev = out[-1] if out else None
        if (isinstance(unit, Group) and isinstance(prev, Group) and prev.members == unit.members
                and prev.loops + unit.loops <= MAX_COUNT):
            out[-1] = Group(unit.members, prev.loops + unit.loops)
        else:
            out.append(unit)
    return tuple(out)


def parse_order(text: str, where: str = "order", plan_left: int = MAX_EXECUTIONS) -> Order:
    """Parse one order string; raises PlanError naming `where` and the offending token. At most
    MAX_EXECUTIONS block executions, and at most `plan_left` (what the plan's other orders left of
    MAX_PLAN_EXECUTIONS), refused as soon as the running count passes either."""
    if plan_left >= MAX_EXECUTIONS:
        budget, over = MAX_EXECUTIONS, f"too many block executions per step (at most {MAX_EXECUTIONS})"
    else:
        budget, over = plan_left, (f"too many block executions in all the plan's orders together "
                                   f"(at most {MAX_PLAN_EXECUTIONS})")
    parser = _Parser(text, where, index="block index", max_index=MAX_BLOCK_INDEX, budget=budget, over_budget=over)
    return _normalize(parser.order())


def parse_steps(text: str, where: str = "active_steps") -> tuple[int, ...]:
    """Step indices in span syntax ("0-1", "0,2,4-6"), as a sorted set. An index is at most
    MAX_STEPS - 1 (no run has more steps), and at most MAX_STEPS indices may be listed."""
    parser = _Parser(text, where, index="step index", max_index=MAX_STEPS - 1, budget=MAX_STEPS,
                     over_budget=f"too many step indices (at most {MAX_STEPS})")
    if parser.peek() is None:
        raise parser.error("syntax error: expected a step index")
    return tuple(sorted(set(parser.comma_list(parser.span))))


# ------------------------------------------------------------------------------------------- printing


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Greedy maximal runs of consecutive indices, ascending or descending, as (first, last)."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(indices):
        j = i
        if i + 1 < len(indices) and abs(indices[i + 1] - indices[i]) == 1:
            step = indices[i + 1] - indices[i]
            while j + 1 < len(indices) and indices[j + 1] - indices[j] == step:
                j += 1
        runs.append((indices[i], indices[j]))
        i = j + 1
    return runs


def span_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def format_unit(unit: Unit) -> str:
    if isinstance(unit, int):
        return str(unit)
    if isinstance(unit, Cached):
        return f"{span_text(unit.first, unit.last)}@{unit.mode}"
    members = ",".join(span_text(a, b) for a, b in _runs(list(unit.members)))
    return f"[{members}]" + (f"x{unit.loops}" if unit.loops > 1 else "")


def _single_tokens(seq: list[int]) -> list[str]:
    """Spans and "*N" repeats for a stretch of plain blocks; a repeat wins over extending a span
    ("13,14,14,14" -> "13, 14*3", not "13-14, 14*2")."""
    tokens: list[str] = []
    i = 0
    while i < len(seq):
        r = 1
        while i + r < len(seq) and seq[i + r] == seq[i] and r < MAX_COUNT:
            r += 1
        if r > 1:
            tokens.append(f"{seq[i]}*{r}")
            i += r
            continue
        j = i
        if i + 1 < len(seq) and abs(seq[i + 1] - seq[i]) == 1:
            step = seq[i + 1] - seq[i]
            while j + 1 < len(seq) and seq[j + 1] - seq[j] == step and not (j + 2 < len(seq) and seq[j + 2] == seq[j + 1]):
                j += 1
        tokens.append(span_text(seq[i], seq[j]))
        i = j + 1
    return tokens


def format_order(order: Order) -> str:
    """The canonical text of an order: runs become spans, back-to-back repeats become "*N"."""
    tokens: list[str] = []
    i = 0
    while i < len(order):
        unit = order[i]
        if not isinstance(unit, int):
            tokens.append(format_unit(unit))
            i += 1
            continue
        j = i
        while j < len(order) and isinstance(order[j], int):
            j += 1
        tokens.extend(_single_tokens(list(order[i:j])))  # type: ignore[arg-type]
        i = j
    out: list[str] = []
    k = 0
    while k < len(tokens):
        n = 1
        repeatable = tokens[k][0] != "[" and "*" not in tokens[k] and "@" not in tokens[k]
        while repeatable and k + n < len(tokens) and tokens[k + n] == tokens[k] and n < MAX_COUNT:
            n += 1
        out.append(tokens[k] + (f"*{n}" if n > 1 else ""))
        k += n
    return ", ".join(out)


def format_steps(steps: tuple[int, ...]) -> str:
    return ",".join(span_text(a, b) for a, b in _runs(list(steps)))


def summary(plan: Plan) -> str:
    """A plan's orders on one line, as the explorer titles a run: each stack its default order changes,
    then each step table ("single: 0-9, 29-37; at steps 0-3 (single: 0-37)"); "full model" if none."""
    parts = [f"{name}: {format_order(order)}" for name, order in plan.orders]
    for table in plan.step_orders:
        inner = "; ".join(f"{name}: {format_order(order)}" for name, order in table.orders) or "full model"
        parts.append(f"at steps {format_steps(table.steps)} ({inner})")
    for name, branch in plan.branches:
        inner = "; ".join(f"{stack}: {format_order(order)}" for stack, order in branch.orders) or "full model"
        scale = f" x{branch.scale:g}" if branch.scale is not None else ""
        at = f" at steps {format_steps(branch.steps)}" if branch.steps is not None else ""
        parts.append(f"{name}{scale}{at} ({inner})")
    return "; ".join(parts) if parts else "full model"


# ----------------------------------------------------------------------------------------- validation


_BOTH = ("cannot be combined with [[steps]] tables (give the steps where the full model runs a [[steps]] "
         "table with an empty [steps.order] instead)")


def validate(plan: Plan, layout: Layout, source: str = "plan") -> None:
    """Check every order (the default one and each step table's) against the model's stacks; raises
    PlanError listing every problem. A step table's problems name it by its position in the plan
    (`steps[0]` has the earliest first step) and end with its steps."""
    problems = _order_problems(plan.orders, layout, f"{source}: order")
    for i, table in enumerate(plan.step_orders):
        at = f" (the table of steps {shown(format_steps(table.steps))})"
        problems += [line + at for line in _order_problems(table.orders, layout, f"{source}: steps[{i}].order")]
    if plan.active_steps is not None and plan.step_orders:
        problems.append(f"{source}: active_steps: {_BOTH}")
    problems += _cache_bound_problems(plan, source)
    problems += _branch_problems(plan, layout, source)
    if problems:
        raise PlanError(problems)


def _branch_problems(plan: Plan, layout: Layout, source: str) -> list[str]:
    """[uncond] and [extra] need a family that runs classifier-free guidance, orders that fit the model,
    and no cached span anywhere in the plan (a span's residuals would be shared between passes)."""
    from dit_explore.engine.core.families import family

    problems: list[str] = []
    for name, branch in plan.branches:
        if family(layout.family).guidance_halves is None:
            problems.append(f"{source}: {name}: guidance-branch plans need classifier-free guidance, which "
                            f"{layout.family} models do not run")
            continue
        problems += _order_problems(branch.orders, layout, f"{source}: {name}.order")
        cached = [u for _, order in branch.orders for u in order if isinstance(u, Cached)]
        if cached or (has_cached(plan) and not problems):
            where = f"{name}.order" if cached else "order"
            problems.append(f"{source}: {where}: cached spans (@reuse, @forecast) cannot be combined with "
                            f"guidance-branch plans ([{name}])")
    return problems


def _cache_bound_problems(plan: Plan, source: str) -> list[str]:
    """Cached spans of one stack must not overlap with other bounds, in one order or across the plan's
    orders: a span's residuals are kept per (stack, bounds, occurrence), and a step that ran other bounds
    would hand over residuals of other blocks. One line a stack, naming the later of two such spans (in
    the plan's order: [order], then steps[0], steps[1] ...) and the earlier; a sort, not all pairs."""
    seen: dict[str, dict[tuple[int, int], tuple[int, str, Cached]]] = {}  # stack -> bounds -> first place
    named = [("order", plan.orders), *((f"steps[{i}].order", t.orders) for i, t in enumerate(plan.step_orders))]
    place = 0
    for key, orders in named:
        for stack, order in orders:
            for unit in order:
                if isinstance(unit, Cached):
                    seen.setdefault(stack, {}).setdefault((unit.first, unit.last), (place, f"{key}.{shown(stack)}", unit))
                    place += 1
    problems: list[str] = []
    for spans in seen.values():
        reach: tuple[int, int] | None = None  # the bounds reaching furthest so far
        for bounds in sorted(spans):
            if reach is not None and bounds[0] <= reach[1]:
                one, other = sorted((spans[bounds], spans[reach]), key=lambda found: found[0])
                problems.append(f"{source}: {other[1]}: '{format_unit(other[2])}' overlaps "
                                f"'{span_text(one[2].first, one[2].last)}@…' of {one[1]} with other bounds (a cached "
                                "span keeps its bounds in every order of a plan)")
                break
            if reach is None or bounds[1] > reach[1]:
                reach = bounds
    return problems


def _order_problems(orders: tuple[tuple[str, Order], ...], layout: Layout, key: str) -> list[str]:
    problems: list[str] = []
    for stack_name, order in orders:
        where = f"{key}.{shown(stack_name)}"
        if stack_name not in layout.names:
            problems.append(f"{where}: unknown stack '{shown(stack_name)}' (this model has: {', '.join(layout.names)})")
            continue
        stack = layout.stack(stack_name)
        bad = sorted({b for b in blocks_in(order) if not 0 <= b < stack.blocks})
        if bad:
            tokens = ",".join(span_text(a, b) for a, b in _runs(bad))
            problems.append(
                f"{where}: block index out of range at '{shown(tokens)}' "
                f"('{stack_name}' has {stack.blocks} blocks: 0-{stack.last})"
            )
        if stack.pre_only_last and not bad:
            problems.extend(_check_pre_only_last(order, stack.last, where))
    return problems


def _check_pre_only_last(order: Order, last: int, where: str) -> list[str]:
    """SD3's last block returns no text stream, so nothing can follow it and no group can hold it."""
    why = f"block {last} returns no text stream: it may be skipped or run once as the last item"
    problems = []
    for unit in order:
        if isinstance(unit, Group) and last in unit.members:
            problems.append(f"{where}: {why}, not inside a parallel group, at '{format_unit(unit)}'")
    for unit in order:
        if isinstance(unit, Cached) and unit.last == last:
            problems.append(f"{where}: {why}, not cached, at '{format_unit(unit)}'")
    positions = [i for i, u in enumerate(order) if u == last]
    if len(positions) > 1:
        problems.append(f"{where}: {why}, not repeated, at '{last}'")
    elif positions and positions[0] != len(order) - 1:
        problems.append(f"{where}: {why}, not followed by other blocks, at '{last}'")
    return problems


def validate_steps(plan: Plan, steps: int, source: str = "plan") -> None:
    """active_steps and the step tables must name steps that exist at this step count."""
    named = [("active_steps", plan.active_steps or ())]
    named += [(f"steps[{i}].steps", table.steps) for i, table in enumerate(plan.step_orders)]
    named += [(f"{name}.steps", branch.steps) for name, branch in plan.branches if branch.steps is not None]
    problems = []
    for key, indices in named:
        bad = tuple(s for s in indices if s >= steps)
        if bad:
            problems.append(f"{source}: {key}: step out of range at '{shown(format_steps(bad))}' "
                            f"(this run has {steps} steps: 0-{steps - 1})")
    if not problems:
        problems = _nothing_to_reuse(plan, steps, source)
    if problems:
        raise PlanError(problems)


def validate_guidance(plan: Plan, layout: Layout, guidance: float, source: str = "plan") -> None:
    """A plan with [uncond] or [extra] needs the doubled batch of classifier-free guidance, which the
    family runs at this guidance scale (above 1): a PlanError of one line otherwise."""
    from dit_explore.engine.core.families import family

    runs = family(layout.family)
    if plan.has_branches and runs.guidance_halves is not None and not runs.uses_cfg(guidance):
        names = " and ".join(f"[{name}]" for name, _ in plan.branches)
        raise PlanError([f"{source}: {names} apply to classifier-free guidance, which this run does not use "
                         f"(guidance {guidance:g}; it runs above 1)"])


def _nothing_to_reuse(plan: Plan, steps: int, source: str) -> list[str]:
    """A cached span after the first step needs an earlier step that computed it: the first step (which
    computes every cached span it runs) or a step running its blocks plainly. Checked step by step in a
    run of `steps` steps, without the model's layout (a stack a step's orders do not name runs
    unchanged, which computes every span of it); each distinct set of orders is read once."""
    keys = cache_keys(plan)
    if not keys:
        return []
    stacks = sorted({k[0] for k in keys})
    read: dict[tuple[bool, int | None], tuple[set[CacheKey], list[tuple[CacheKey, str, str]]]] = {}
    computed: set[CacheKey] = set()
    problems: list[str] = []
    reported: set[CacheKey] = set()
    for step in range(steps):
        variant = plan.variant_at(step)
        if variant not in read:
            orders, named = _orders_named_at(plan, step)
            computes: set[CacheKey] = set()
            cached: list[tuple[CacheKey, str, str]] = []  # (key, where, the span as written)
            for stack in stacks:
                order = orders.get(stack)
                if order is None:  # the stack runs unchanged: every span of it computes, occurrence 0
                    computes.update(k for k in keys if k[0] == stack and k[3] == 0)
                    continue
                for at, _, key in cache_slots(stack, order, keys):
                    if isinstance(order[at], Cached):
                        cached.append((key, f"{named[stack]}.{shown(stack)}", format_unit(order[at])))
                    else:
                        computes.add(key)
            read[variant] = (computes, cached)
        computes, cached = read[variant]
        for key, where, written in cached:
            if step == 0:
                computed.add(key)
            elif key not in computed and key not in reported:
                reported.add(key)
                problems.append(f"{source}: {where}: step {step}: '{written}' has nothing to reuse: no earlier step "
                                f"computes blocks {span_text(key[1], key[2])} (the first step always computes)")
        computed |= computes
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def _orders_named_at(plan: Plan, step: int) -> tuple[dict[str, Order], dict[str, str]]:
    """The orders `plan` names for step `step` (stacks it leaves alone are absent) and, for each, the key
    that gave it (`order`, `steps[i].order`)."""
    if not plan.applies_at(step):
        return {}, {}
    at = plan.table_at(step)
    orders = dict(plan.orders)
    named = {name: "order" for name in orders}
    if at is not None:
        table = plan.step_orders[at]
        if not table.orders:
            return {}, {}
        orders.update(table.orders)
        named.update({name: f"steps[{at}].order" for name, _ in table.orders})
    return orders, named


# ----------------------------------------------------------------------------------------------- files

_TOP_KEYS = ("version", "model", "name", "note", "active_steps", "order", "steps", "uncond", "extra", "sampling")
_BRANCH_KEYS = {"uncond": ("steps", "order"), "extra": ("scale", "steps", "order")}
_STEP_KEYS = ("steps", "order")
_VERSIONS_READ = " or ".join(map(str, PLAN_VERSIONS))
_SAMPLING_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "seed": (int,),
    "steps": (int,),
    "width": (int,),
    "height": (int,),
    "guidance": (int, float),
}


def loads(text: str, source: str = "<plan>") -> Plan:
    """Parse the text of a `.plan.toml` file (syntax only; see `validate` for the model's layout).
    Text over MAX_PLAN_BYTES is refused on its size alone, before the TOML parser sees it."""
    size = len(text.encode("utf-8", "surrogatepass"))  # one linear pass, whatever the text holds
    if size > MAX_PLAN_BYTES:
        raise PlanError([f"{source}: {size} bytes; plans are at most {MAX_PLAN_BYTES} bytes"])
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise PlanError([f"{source}: not a plan: arrays or tables nested too deeply"]) from None
    except ValueError as exc:  # TOMLDecodeError, or an integer over Python's 4300-digit limit
        reason = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else "a number too long to read"
        raise PlanError([f"{source}: not valid TOML: {shown(reason)}"]) from None
    return from_mapping(data, source)


def _kind(value: object) -> str:
    """A TOML value's type, in words, with the value itself cut and escaped."""
    kinds = {bool: "the boolean", str: "the string", int: "the integer", float: "the float", list: "an array",
             dict: "a table"}
    words = next((w for t, w in kinds.items() if isinstance(value, t)), "the date/time")
    return f"{words} '{_shown_value(value)}'"


def _shown_value(value: object) -> str:
    """A TOML value as an error line echoes it: TOML's spelling of booleans, cut and escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return shown(value)


def from_mapping(data: Mapping[str, Any], source: str) -> Plan:
    problems: list[str] = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{source}: {shown(key)}: unknown key (known: {', '.join(_TOP_KEYS)})")
    version = data.get("version")
    if version is None:
        problems.append(f"{source}: version: missing (this dit-explore reads version = {_VERSIONS_READ})")
    elif type(version) is not int:
        problems.append(f"{source}: version: must be the integer {_VERSIONS_READ}, got {_kind(version)}")
    elif version not in PLAN_VERSIONS:
        problems.append(f"{source}: version: unsupported version at '{shown(version)}' "
                        f"(this dit-explore reads version = {_VERSIONS_READ})")

    texts: dict[str, str | None] = {}
    caps = {"model": MAX_NAME, "name": MAX_NAME, "note": MAX_NOTE, "active_steps": None}
    for key, cap in caps.items():
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{source}: {key}: expected a string, got {_kind(value)}")
            value = None
        elif value is not None and cap is not None and len(value) > cap:
            problems.append(f"{source}: {key}: at most {cap} characters, got {len(value)}")
            value = None
        texts[key] = value

    active_steps = None
    if texts["active_steps"] is not None:
        try:
            active_steps = parse_steps(texts["active_steps"], f"{source}: active_steps")
        except PlanError as exc:
            problems.extend(exc.problems)

    left = [MAX_PLAN_EXECUTIONS]  # block executions all the plan's orders may still write
    orders = _orders_from(data.get("order", {}), f"{source}: order", "[order] single = \"0-37\"", left, problems)
    step_orders = _step_tables_from(data, version, source, left, problems)
    uncond, extra = (_branch_from(data, name, version, source, left, problems) for name in BRANCHES)
    if step_orders and "active_steps" in data:
        problems.append(f"{source}: active_steps: {_BOTH}")
    if type(version) is int and version == 1:
        for stack, order in orders:
            cached = next((u for u in order if isinstance(u, Cached)), None)
            if cached is not None:
                problems.append(f"{source}: order.{shown(stack)}: '{format_unit(cached)}': @reuse and @forecast "
                                "need version = 2 (this file says version = 1)")

    sampling = Sampling()
    raw_sampling = data.get("sampling", {})
    if not isinstance(raw_sampling, dict):
        problems.append(f"{source}: sampling: expected a table, got {_kind(raw_sampling)}")
        raw_sampling = {}
    values: dict[str, Any] = {}
    for key, value in raw_sampling.items():
        types = _SAMPLING_TYPES.get(key)
        if types is None:
            problems.append(f"{source}: sampling.{shown(key)}: unknown key (known: {', '.join(_SAMPLING_TYPES)})")
        elif isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{source}: sampling.{key}: wrong type at {_kind(value)}")
        elif key == "guidance" and isinstance(value, (int, float)):
            try:
                values[key] = float(value)
            except OverflowError:  # an integer beyond any float: as infinite as it gets
                values[key] = math.inf
        else:
            values[key] = value
    try:
        sampling = check_sampling(Sampling(**values), f"{source}: sampling.")
    except PlanError as exc:
        problems.extend(exc.problems)

    if problems:
        raise PlanError(problems)
    return Plan(
        orders=orders,
        active_steps=active_steps,
        model=texts["model"],
        name=texts["name"],
        note=texts["note"],
        sampling=sampling,
        step_orders=step_orders,
        uncond=uncond,
        extra=extra,
    )


def _orders_from(raw: Any, key: str, like: str, left: list[int], problems: list[str]) -> tuple[tuple[str, Order], ...]:
    """The orders of an [order] (or [steps.order]) table, sorted by stack name; each paid for from `left`."""
    if not isinstance(raw, dict):
        problems.append(f"{key}: expected a table like {like}, got {_kind(raw)}")
        return ()
    if len(raw) > MAX_STACKS:
        problems.append(f"{key}: at most {MAX_STACKS} stacks, got {len(raw)}")
        return ()
    orders: list[tuple[str, Order]] = []
    for stack_name, text in raw.items():
        if not isinstance(text, str):
            problems.append(f"{key}.{shown(stack_name)}: expected a string like \"0-9, 20-37\", got {_kind(text)}")
            continue
        try:
            order = parse_order(text, f"{key}.{shown(stack_name)}", left[0])
        except PlanError as exc:
            problems.extend(exc.problems)
            continue
        left[0] -= executions(order)
        orders.append((stack_name, order))
    return tuple(sorted(orders, key=lambda item: item[0]))


def _step_tables_from(data: Mapping[str, Any], version: object, source: str, left: list[int],
                      problems: list[str]) -> tuple[StepTable, ...]:
    """The [[steps]] tables, sorted by first step. Problems name a table by its position in the file
    (`steps[0]` is the first); a step in two tables names both."""
    raw = data.get("steps")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        problems.append(f"{source}: steps: expected [[steps]] tables (steps = \"0-3\" and a [steps.order] "
                        f"table each), got {_kind(raw)}")
        return ()
    if len(raw) > MAX_STEP_TABLES:
        problems.append(f"{source}: steps: at most {MAX_STEP_TABLES} [[steps]] tables, got {len(raw)}")
        return ()
    if raw and type(version) is int and version == 1:
        problems.append(f"{source}: steps: [[steps]] tables need version = 2 (this file says version = 1)")
        return ()
    tables: list[StepTable] = []
    owner: dict[int, int] = {}  # step -> the first table that names it
    for i, table in enumerate(raw):
        where = f"{source}: steps[{i}]"
        for key in table:
            if key not in _STEP_KEYS:
                problems.append(f"{where}.{shown(key)}: unknown key (known: {', '.join(_STEP_KEYS)})")
        steps: tuple[int, ...] | None = None
        text = table.get("steps")
        if text is None:
            problems.append(f"{where}.steps: missing (the denoising steps of the table, like \"0-3\")")
        elif not isinstance(text, str):
            problems.append(f"{where}.steps: expected a string like \"0-3\", got {_kind(text)}")
        else:
            try:
                steps = parse_steps(text, f"{where}.steps")
            except PlanError as exc:
                problems.extend(exc.problems)
        if "order" not in table:
            problems.append(f"{where}.order: missing (an empty [steps.order] runs the full model on these steps)")
            continue
        orders = _orders_from(table["order"], f"{where}.order", "[steps.order] single = \"0-37\"", left, problems)
        if steps is None:
            continue
        shared: dict[int, list[int]] = {}
        for step in steps:
            shared.setdefault(owner.setdefault(step, i), []).append(step)
        for j, clash in shared.items():
            if j != i:
                problems.append(f"{where}.steps: overlaps steps[{j}] at '{format_steps(tuple(clash))}' "
                                "(a step takes the orders of one table at most)")
        tables.append(StepTable(steps, orders))
    return tuple(sorted(tables, key=lambda table: table.steps[0]))


def _branch_from(data: Mapping[str, Any], name: str, version: object, source: str, left: list[int],
                 problems: list[str]) -> Branch | None:
    """An [uncond] or [extra] table: its optional steps window, its orders ([uncond.order]: optional, the
    full model when absent; [extra.order]: required) and the extra pass's scale (required there)."""
    raw = data.get(name)
    if raw is None:
        return None
    where = f"{source}: {name}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a table [{name}], got {_kind(raw)}")
        return None
    if type(version) is int and version == 1:
        problems.append(f"{where}: [{name}] needs version = 2 (this file says version = 1)")
        return None
    known = _BRANCH_KEYS[name]
    for key in raw:
        if key not in known:
            problems.append(f"{where}.{shown(key)}: unknown key (known: {', '.join(known)})")
    steps: tuple[int, ...] | None = None
    text = raw.get("steps")
    if text is not None and not isinstance(text, str):
        problems.append(f"{where}.steps: expected a string like \"1-5\", got {_kind(text)}")
    elif text is not None:
        try:
            steps = parse_steps(text, f"{where}.steps")
        except PlanError as exc:
            problems.extend(exc.problems)
    scale: float | None = None
    if name == "extra":
        value = raw.get("scale")
        if value is None:
            problems.append(f"{where}.scale: missing (how strongly the pass guides, like 2.8)")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}.scale: expected a number like 2.8, got {_kind(value)}")
        elif not (finite_number(value) and abs(value) <= MAX_BRANCH_SCALE):
            problems.append(f"{where}.scale: must be a finite number within ±{MAX_BRANCH_SCALE:g} at "
                            f"'{_shown_value(value)}'")
        else:
            scale = float(value)
        if "order" not in raw:
            problems.append(f"{where}.order: missing (the extra pass's orders, like [extra.order] double = \"0-6, 10-23\")")
    orders = _orders_from(raw.get("order", {}), f"{where}.order", f"[{name}.order] double = \"0-6, 10-23\"", left,
                          problems)
    return Branch(orders, steps, scale)


def check_sampling(sampling: Sampling, prefix: str) -> Sampling:
    """Range checks that need no model: positive sizes and steps, finite guidance, a non-empty prompt.
    Problems are named `{prefix}{field}` ("plan.toml: sampling.steps", "--steps")."""
    problems = []
    for key, cap in (("steps", MAX_STEPS), ("width", MAX_SIDE), ("height", MAX_SIDE)):
        value = getattr(sampling, key)
        if value is not None and value < 1:
            problems.append(f"{prefix}{key}: must be at least 1 at '{shown(value)}'")
        elif value is not None and value > cap:
            problems.append(f"{prefix}{key}: must be at most {cap} at '{shown(value)}'")
    if sampling.seed is not None and not 0 <= sampling.seed < 2**63:
        problems.append(f"{prefix}seed: must be in 0..2**63-1 at '{shown(sampling.seed)}'")
    if sampling.guidance is not None and not (math.isfinite(sampling.guidance) and sampling.guidance >= 0):
        problems.append(f"{prefix}guidance: must be a finite number >= 0 at '{shown(sampling.guidance)}'")
    if sampling.prompt is not None and not sampling.prompt.strip():
        problems.append(f"{prefix}prompt: must not be empty")
    elif sampling.prompt is not None and len(sampling.prompt) > MAX_PROMPT:
        problems.append(f"{prefix}prompt: at most {MAX_PROMPT} characters, got {len(sampling.prompt)}")
    if problems:
        raise PlanError(problems)
    return sampling


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, except that TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dumps(plan: Plan, comment: str | None = None) -> str:
    """The `.plan.toml` text of a plan, orders in canonical form. `comment` lines go on top as `# ...`.
    Version 1 unless the plan has step tables (each as a [[steps]] table after [order]) or cached spans:
    version 2."""
    printable = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in comment or "")
    lines = [f"# {line}".rstrip() for line in printable.splitlines()]
    # A plan without step tables or cached spans reads as before.
    lines.append(f"version = {2 if plan.step_orders or has_cached(plan) or plan.has_branches else 1}")
    for key in ("model", "name", "note"):
        if getattr(plan, key) is not None:
            lines.append(f"{key} = {_toml_value(getattr(plan, key))}")
    if plan.active_steps is not None:
        lines.append(f"active_steps = {_toml_value(format_steps(plan.active_steps))}")
    lines += ["", "[order]"]
    lines += [f"{_toml_key(name)} = {_toml_value(format_order(order))}" for name, order in plan.orders]
    for table in plan.step_orders:
        lines += ["", "[[steps]]", f"steps = {_toml_value(format_steps(table.steps))}", "[steps.order]"]
        lines += [f"{_toml_key(name)} = {_toml_value(format_order(order))}" for name, order in table.orders]
    for name, branch in plan.branches:
        lines += ["", f"[{name}]"]
        if branch.scale is not None:
            lines.append(f"scale = {_toml_value(branch.scale)}")
        if branch.steps is not None:
            lines.append(f"steps = {_toml_value(format_steps(branch.steps))}")
        lines.append(f"[{name}.order]")
        lines += [f"{_toml_key(stack)} = {_toml_value(format_order(order))}" for stack, order in branch.orders]
    sampling = {k: v for k, v in asdict(plan.sampling).items() if v is not None}
    if sampling:
        lines += ["", "[sampling]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sampling.items()]
    return "\n".join(lines) + "\n"


def load(path: str | os.PathLike[str]) -> Plan:
    """Read a `.plan.toml` file, or the plan stored in a PNG written by dit-explore (replay). Only a
    regular file is read (never a FIFO or a device), and only up to its limit; every failure is a
    PlanError of one line."""
    path = Path(path)
    source = str(path)
    if path.suffix.lower() == ".png":
        text = _png_plan_text(path)
    else:
        try:
            text = read_user_text(path, limit=MAX_PLAN_BYTES, kind="plan files")
        except UserFileError as exc:
            raise PlanError([str(exc)]) from None
    return loads(text, source)


def _png_plan_text(path: Path) -> str:
    from PIL import Image  # pillow is light; only replay needs it

    try:
        with open_user_file(path, limit=MAX_PNG_BYTES, kind="PNGs read as plans") as file, Image.open(file) as image:
            text = image.info.get(PNG_PLAN_KEY)  # tEXt/iTXt chunks before the pixels land in .info
    except UserFileError as exc:
        raise PlanError([str(exc)]) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's many ways of saying "not a PNG" (OSError, ValueError, ...)
        raise PlanError([f"{path}: cannot read image: {shown(exc)}"]) from None
    if not isinstance(text, str):
        raise PlanError([f"{path}: this PNG carries no dit-explore plan (only images written by dit-explore do)"])
    return text


def save(plan: Plan, path: str | os.PathLike[str], comment: str | None = None) -> Path:
    """Write atomically: a reader never sees half a plan file. A plan that would not load back (its
    canonical text over MAX_PLAN_BYTES, a name over MAX_NAME, ...) is refused with PlanError before
    anything is written: what is saved can always be opened."""
    path = Path(path)
    text = dumps(plan, comment)
    loads(text, path.name)  # the same checks the file will meet when it is opened
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=PLAN_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
