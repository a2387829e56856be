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
from typing import Any, TypeVar

from dit_explore.engine.core.layout import Layout

T = TypeVar("T")
PLAN_VERSION = 1
PLAN_SUFFIX = ".plan.toml"
PNG_PLAN_KEY = "dit-explore"  # PNG text chunk holding the plan file of the image
MAX_COUNT = 1000  # largest "*N" / "xK"
MAX_EXECUTIONS = 10_000  # block executions per stack per step; beyond this a typo, not an experiment
MAX_STEPS = 1000  # denoising steps of one image: flow models converge in 4-50; 10000 ran 227 s without a word
MAX_SIDE = 16384  # pixels of a width or height, for every family (an architecture may allow fewer)
MAX_PROMPT = 10_000  # characters of one prompt: the text encoders read at most 512 tokens of it


class PlanError(ValueError):
    """Bad plan input. Each line of the message is one problem naming the file, the key and the token."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Group:
    """Parallel blocks: each gets the same input, their outputs are averaged; repeated `loops` times."""

    members: tuple[int, ...]  # sorted, distinct, at least two
    loops: int = 1


Unit = int | Group  # one entry of an order: a block index or a parallel group
Order = tuple[Unit, ...]


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


@dataclass(frozen=True)
class Plan:
    # (stack name, order), sorted by stack name; a stack not listed runs unchanged.
    orders: tuple[tuple[str, Order], ...] = ()
    active_steps: tuple[int, ...] | None = None  # sorted, distinct; None = every step
    model: str | None = None
    name: str | None = None
    note: str | None = None
    sampling: Sampling = field(default_factory=Sampling)

    def order(self, stack: str) -> Order | None:
        for name, order in self.orders:
            if name == stack:
                return order
        return None

    def with_order(self, stack: str, order: Order | None) -> Plan:
        """A copy with `stack`'s order replaced (None removes it: the stack runs unchanged)."""
        rest = [(n, o) for n, o in self.orders if n != stack]
        if order is not None:
            rest.append((stack, tuple(order)))
        return replace(self, orders=tuple(sorted(rest, key=lambda item: item[0])))

    def resolved(self, layout: Layout) -> dict[str, Order]:
        """Every stack of `layout` with the order it runs (the identity where the plan is silent)."""
        out = {}
        for s in layout.stacks:
            order = self.order(s.name)
            out[s.name] = identity_order(s.blocks) if order is None else order  # () runs no block
        return out

    def is_identity(self, layout: Layout) -> bool:
        return all(order == identity_order(layout.stack(name).blocks) for name, order in self.orders)

    def applies_at(self, step: int) -> bool:
        return self.active_steps is None or step in self.active_steps


def identity_order(blocks: int) -> Order:
    return tuple(range(blocks))


def executions(order: Order) -> int:
    """Block executions one pass over `order` costs."""
    return sum(1 if isinstance(u, int) else len(u.members) * u.loops for u in order)


def blocks_in(order: Order) -> Iterator[int]:
    for unit in order:
        if isinstance(unit, int):
            yield unit
        else:
            yield from unit.members


# ---------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Token:
    kind: str  # "int" or the punctuation character itself
    text: str
    column: int  # 1-based, in the string as written


def _tokenize(text: str, where: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch.isascii() and ch.isdigit():
            j = i
            while j < len(text) and text[j].isascii() and text[j].isdigit():
                j += 1
            tokens.append(_Token("int", text[i:j], i + 1))
            i = j
        elif ch in ",-*[]x":
            tokens.append(_Token(ch, ch, i + 1))
            i += 1
        else:
            raise PlanError([f"{where}: syntax error at '{ch}' (column {i + 1}): unexpected character"])
    return tokens


class _Parser:
    """Recursive descent over the tokens of one order string; errors name the offending token."""

    def __init__(self, text: str, where: str) -> None:
        self.where = where
        self.tokens = _tokenize(text, where)
        self.pos = 0

    def error(self, message: str, token: _Token | None = None) -> PlanError:
        token = token or self.peek()
        at = f"'{token.text}' (column {token.column})" if token else "end of text"
        return PlanError([f"{self.where}: {message} at {at}"])

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, what: str) -> _Token:
        token = self.peek()
        if token is None or token.kind != kind:
            raise self.error(f"syntax error: expected {what}")
        self.pos += 1
        return token

    def accept(self, kind: str) -> _Token | None:
        token = self.peek()
        if token is not None and token.kind == kind:
            self.pos += 1
            return token
        return None

    def count(self, what: str) -> int:
        token = self.take("int", f"a {what} count")
        value = int(token.text)
        if value < 1:
            raise self.error(f"{what} count must be at least 1", token)
        if value > MAX_COUNT:
            raise self.error(f"{what} count must be at most {MAX_COUNT}", token)
        return value

    def span(self) -> list[int]:
        first = int(self.take("int", "a block index").text)
        if self.accept("-") is None:
            return [first]
        last = int(self.take("int", "the end of a range").text)
        step = 1 if last >= first else -1
        return list(range(first, last + step, step))

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
            blocks = self.span()
            times = self.count("repeat") if self.accept("*") else 1
            return [b for _ in range(times) for b in blocks]
        members: list[int] = []
        while True:
            start = self.peek()
            for b in self.span():
                if b in members:
                    raise self.error(f"block {b} appears twice in a parallel group", start)
                members.append(b)
            if self.accept(",") is None:
                break
        self.take("]", "']' closing the parallel group")
        loops = self.count("loop") if self.accept("x") else 1
        if len(members) == 1:  # the average of one block is that block
            return [members[0]] * loops
        return [Group(tuple(sorted(members)), loops)]


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


def parse_order(text: str, where: str = "order") -> Order:
    """Parse one order string; raises PlanError naming `where` and the offending token."""
    order = _normalize(_Parser(text, where).order())
    if executions(order) > MAX_EXECUTIONS:
        raise PlanError([f"{where}: {executions(order)} block executions per step (at most {MAX_EXECUTIONS})"])
    return order


def parse_steps(text: str, where: str = "active_steps") -> tuple[int, ...]:
    """Step indices in span syntax ("0-1", "0,2,4-6"), as a sorted set."""
    parser = _Parser(text, where)
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
        if isinstance(unit, Group):
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
        repeatable = tokens[k][0] != "[" and "*" not in tokens[k]
        while repeatable and k + n < len(tokens) and tokens[k + n] == tokens[k] and n < MAX_COUNT:
            n += 1
        out.append(tokens[k] + (f"*{n}" if n > 1 else ""))
        k += n
    return ", ".join(out)


def format_steps(steps: tuple[int, ...]) -> str:
    return ",".join(span_text(a, b) for a, b in _runs(list(steps)))


# ----------------------------------------------------------------------------------------- validation


def validate(plan: Plan, layout: Layout, source: str = "plan") -> None:
    """Check every order against the model's stacks; raises PlanError listing every problem."""
    problems: list[str] = []
    for stack_name, order in plan.orders:
        where = f"{source}: order.{stack_name}"
        if stack_name not in layout.names:
            problems.append(f"{where}: unknown stack '{stack_name}' (this model has: {', '.join(layout.names)})")
            continue
        stack = layout.stack(stack_name)
        bad = sorted({b for b in blocks_in(order) if not 0 <= b < stack.blocks})
        if bad:
            tokens = ",".join(span_text(a, b) for a, b in _runs(bad))
            problems.append(
                f"{where}: block index out of range at '{tokens}' "
                f"('{stack_name}' has {stack.blocks} blocks: 0-{stack.last})"
            )
        if stack.pre_only_last and not bad:
            problems.extend(_check_pre_only_last(order, stack.last, where))
    if problems:
        raise PlanError(problems)


def _check_pre_only_last(order: Order, last: int, where: str) -> list[str]:
    """SD3's last block returns no text stream, so nothing can follow it and no group can hold it."""
    why = f"block {last} returns no text stream: it may be skipped or run once as the last item"
    problems = []
    for unit in order:
        if isinstance(unit, Group) and last in unit.members:
            problems.append(f"{where}: {why}, not inside a parallel group, at '{format_unit(unit)}'")
    positions = [i for i, u in enumerate(order) if u == last]
    if len(positions) > 1:
        problems.append(f"{where}: {why}, not repeated, at '{last}'")
    elif positions and positions[0] != len(order) - 1:
        problems.append(f"{where}: {why}, not followed by other blocks, at '{last}'")
    return problems


def validate_steps(plan: Plan, steps: int, source: str = "plan") -> None:
    """active_steps must name steps that exist at this step count."""
    if plan.active_steps is None:
        return
    bad = [s for s in plan.active_steps if s >= steps]
    if bad:
        raise PlanError(
            [f"{source}: active_steps: step out of range at '{format_steps(tuple(bad))}' "
             f"(this run has {steps} steps: 0-{steps - 1})"]
        )


# ----------------------------------------------------------------------------------------------- files

_TOP_KEYS = ("version", "model", "name", "note", "active_steps", "order", "sampling")
_SAMPLING_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "seed": (int,),
    "steps": (int,),
    "width": (int,),
    "height": (int,),
    "guidance": (int, float),
}


def loads(text: str, source: str = "<plan>") -> Plan:
    """Parse the text of a `.plan.toml` file (syntax only; see `validate` for the model's layout)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError([f"{source}: not valid TOML: {exc}"]) from None
    return from_mapping(data, source)


def from_mapping(data: Mapping[str, Any], source: str) -> Plan:
    problems: list[str] = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{source}: {key}: unknown key (known: {', '.join(_TOP_KEYS)})")
    version = data.get("version")
    if version is None:
        problems.append(f"{source}: version: missing (this dit-explore reads version = {PLAN_VERSION})")
    elif type(version) is not int or version != PLAN_VERSION:
        problems.append(f"{source}: version: unsupported version at '{version}' (this dit-explore reads {PLAN_VERSION})")

    texts: dict[str, str | None] = {}
    for key in ("model", "name", "note", "active_steps"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{source}: {key}: expected a string, got '{value}'")
            value = None
        texts[key] = value

    active_steps = None
    if texts["active_steps"] is not None:
        try:
            active_steps = parse_steps(texts["active_steps"], f"{source}: active_steps")
        except PlanError as exc:
            problems.extend(exc.problems)

    orders: list[tuple[str, Order]] = []
    raw_orders = data.get("order", {})
    if not isinstance(raw_orders, dict):
        problems.append(f"{source}: order: expected a table like [order] single = \"0-37\", got '{raw_orders}'")
        raw_orders = {}
    for stack_name, text in raw_orders.items():
        if not isinstance(text, str):
            problems.append(f"{source}: order.{stack_name}: expected a string like \"0-9, 20-37\", got '{text}'")
            continue
        try:
            orders.append((stack_name, parse_order(text, f"{source}: order.{stack_name}")))
        except PlanError as exc:
            problems.extend(exc.problems)

    sampling = Sampling()
    raw_sampling = data.get("sampling", {})
    if not isinstance(raw_sampling, dict):
        problems.append(f"{source}: sampling: expected a table, got '{raw_sampling}'")
        raw_sampling = {}
    values: dict[str, Any] = {}
    for key, value in raw_sampling.items():
        types = _SAMPLING_TYPES.get(key)
        if types is None:
            problems.append(f"{source}: sampling.{key}: unknown key (known: {', '.join(_SAMPLING_TYPES)})")
        elif isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{source}: sampling.{key}: wrong type at '{value}'")
        elif key == "guidance" and isinstance(value, (int, float)):
            values[key] = float(value)
        else:
            values[key] = value
    try:
        sampling = check_sampling(Sampling(**values), f"{source}: sampling.")
    except PlanError as exc:
        problems.extend(exc.problems)

    if problems:
        raise PlanError(problems)
    return Plan(
        orders=tuple(sorted(orders, key=lambda item: item[0])),
        active_steps=active_steps,
        model=texts["model"],
        name=texts["name"],
        note=texts["note"],
        sampling=sampling,
    )


def check_sampling(sampling: Sampling, prefix: str) -> Sampling:
    """Range checks that need no model: positive sizes and steps, finite guidance, a non-empty prompt.
    Problems are named `{prefix}{field}` ("plan.toml: sampling.steps", "--steps")."""
    problems = []
    for key, cap in (("steps", MAX_STEPS), ("width", MAX_SIDE), ("height", MAX_SIDE)):
        value = getattr(sampling, key)
        if value is not None and value < 1:
            problems.append(f"{prefix}{key}: must be at least 1 at '{value}'")
        elif value is not None and value > cap:
            problems.append(f"{prefix}{key}: must be at most {cap} at '{value}'")
    if sampling.seed is not None and not 0 <= sampling.seed < 2**63:
        problems.append(f"{prefix}seed: must be in 0..2**63-1 at '{sampling.seed}'")
    if sampling.guidance is not None and not (math.isfinite(sampling.guidance) and sampling.guidance >= 0):
        problems.append(f"{prefix}guidance: must be a finite number >= 0 at '{sampling.guidance}'")
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
    """The `.plan.toml` text of a plan, orders in canonical form. `comment` lines go on top as `# ...`."""
    printable = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in comment or "")
    lines = [f"# {line}".rstrip() for line in printable.splitlines()]
    lines.append(f"version = {PLAN_VERSION}")
    for key in ("model", "name", "note"):
        if getattr(plan, key) is not None:
            lines.append(f"{key} = {_toml_value(getattr(plan, key))}")
    if plan.active_steps is not None:
        lines.append(f"active_steps = {_toml_value(format_steps(plan.active_steps))}")
    lines += ["", "[order]"]
    lines += [f"{_toml_key(name)} = {_toml_value(format_order(order))}" for name, order in plan.orders]
    sampling = {k: v for k, v in asdict(plan.sampling).items() if v is not None}
    if sampling:
        lines += ["", "[sampling]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sampling.items()]
    return "\n".join(lines) + "\n"


def load(path: str | os.PathLike[str]) -> Plan:
    """Read a `.plan.toml` file, or the plan stored in a PNG written by dit-explore (replay)."""
    path = Path(path)
    source = str(path)
    if path.suffix.lower() == ".png":
        text = _png_plan_text(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PlanError([f"{source}: no such file"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError([f"{source}: cannot read: {exc}"]) from None
    return loads(text, source)


def _png_plan_text(path: Path) -> str:
    from PIL import Image, UnidentifiedImageError  # pillow is light; only replay needs it

    try:
        with Image.open(path) as image:
            text = image.info.get(PNG_PLAN_KEY)  # tEXt/iTXt chunks land in .info
    except FileNotFoundError:
        raise PlanError([f"{path}: no such file"]) from None
    except (OSError, UnidentifiedImageError) as exc:
        raise PlanError([f"{path}: cannot read image: {exc}"]) from None
    if not isinstance(text, str):
        raise PlanError([f"{path}: this PNG carries no dit-explore plan (only images written by dit-explore do)"])
    return text


def save(plan: Plan, path: str | os.PathLike[str], comment: str | None = None) -> Path:
    """Write atomically: a reader never sees half a plan file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=PLAN_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(plan, comment))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
