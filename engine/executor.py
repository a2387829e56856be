"""Apply a plan to a loaded transformer by swapping its block lists.

Every strategy is an order over a stack's blocks, so the executor replaces each stack's `nn.ModuleList`
with one built from the plan (the original block objects, reused; a `ParallelGroup` for parallel
groups), lets the model's own `forward` loop run it, and restores the originals in a `finally`. The
pipeline stays untouched, the same code serves every family (what a family's blocks take and return is
declared in engine/core/families/, never guessed here), and blocks compiled one by one stay compiled
across plan changes.

The contract with diffusers: each family's forward iterates its block lists (`for block in
self.transformer_blocks`) once per call and calls each block it gets. tests/engine/test_families.py
checks that for every family, so a diffusers release that changes it fails loudly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

from dit_explore.engine.core.families import BlockIO, BlockLayoutError, StackSpec, family
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Cached, CacheKey, Group, Order, Plan, cache_keys, cache_slots, format_unit

Check = Callable[[], None]  # raises (e.g. Cancelled) to stop between block executions


class Cancelled(Exception):
    """Raised between two block executions when a run is cancelled."""


def _no_check() -> None:
    return None


class StandIn(nn.Module):
    """A module the executor puts in a block's place. The model's forward loop may read attributes off
    its blocks (SD3 reads `block.context_pre_only` when a ControlNet is attached); a stand-in answers
    them from the block it stands in for (`standing_for`), so no family's attributes are hard-coded."""

    def standing_for(self) -> nn.Module | None:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            block = None if name.startswith("_") else self.standing_for()
            if block is None:
                raise
            return getattr(block, name)


def _pack(io: BlockIO, parts: list[torch.Tensor]) -> Any:
    """Output streams as a block of `io` returns them: one tensor, or a tuple in declared order."""
    return parts[0] if len(io.outputs) == 1 else tuple(parts)


class ParallelGroup(StandIn):
    """Members get the same input; each output stream is averaged over members; `loops` times over.

    What a block returns, and which of its arguments each output feeds in the next loop, is the stack's
    declared BlockIO (engine/core/families/): a block that returns anything else raises
    BlockLayoutError instead of being averaged wrongly. The average accumulates in float32 so it does
    not depend on the member order.
    """

    def __init__(self, members: list[nn.Module], loops: int, io: BlockIO, where: str = "parallel group",
                 check: Check = _no_check) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.loops = loops
        self.io = io
        self.where = where
        self._check = check

    def standing_for(self) -> nn.Module | None:
        # A group never holds a block that differs from the others in what the loop reads off it (SD3's
        # context-pre-only last block cannot be in a group), so the first member speaks for all.
        return self.members[0] if len(self.members) else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out: Any = None
        for loop in range(self.loops):
            if loop:
                args, kwargs = self.io.feed_back(args, kwargs, out, self.where)
            out = self._average(args, kwargs)
        return out

    def _outputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[list[torch.Tensor]]:
        """Each member's output streams in declared order, checked against the declared layout."""
        for i, member in enumerate(self.members):
            if i:
                self._check()
            streams = self.io.streams(member(*args, **kwargs), f"{self.where} member {i}")
            yield [streams[name] for name in self.io.outputs]


    def _average(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Each stream's float32 sum over the members, rounded to the stream's dtype once: a running sum,
        so only the sum and one member's output are held at a time. With compiled blocks the sum runs in
        the shape-generic kernels `prepare_averaging` compiled (an elementwise pass each costs a
        noticeable share of a compiled group), else in eager in-place ops."""
        n = len(self.members)
        ops: _EagerSum | _CompiledSum = _EAGER_SUM
        first: list[torch.Tensor] | None = None
        sums: list[torch.Tensor] | None = None
        for i, parts in enumerate(self._outputs(args, kwargs)):
            if n == 1:
                return _pack(self.io, parts)
            if i == 0:
                first = parts
                if self.fused and _COMPILED_SUM.covers(parts):
                    ops = _COMPILED_SUM
            elif i == n - 1:
                if sums is None:  # two members
                    assert first is not None
                    return _pack(self.io, [ops.mean2(a, b) for a, b in zip(first, parts)])
                return _pack(self.io, [ops.finish(s, p, n) for s, p in zip(sums, parts)])
            elif sums is None:
                assert first is not None
                sums, first = [ops.start(a, b) for a, b in zip(first, parts)], None
            else:
                sums = [ops.add(s, p) for s, p in zip(sums, parts)]
        raise AssertionError("a parallel group has members")

    @property
    def fused(self) -> bool:
        return any(getattr(m, "_compiled_call_impl", None) is not None for m in self.members)


class _EagerSum:
    """A group's running float32 sum in eager ops: in place where it can, the last addition, the division
    and the rounding to the stream's dtype in as few passes as eager torch allows."""

    @staticmethod
    def start(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.to(torch.float32, copy=True).add_(b)

    @staticmethod
    def add(total: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return total.add_(x)

    @staticmethod
    def finish(total: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.div(total.add_(x), n, out=torch.empty_like(x))  # divides in float32, rounds once

    @classmethod
    def mean2(cls, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cls.finish(a.to(torch.float32, copy=True), b, 2)


def _start(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.float() + b.float()


def _add(total: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return total + x.float()


def _finish(total: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    return ((total + x.float()) / n).to(x.dtype)


def _mean2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() + b.float()) / 2).to(a.dtype)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """One dimension, and not a view as Dynamo sees it (`detach`): the compiled kernels then see the same
    kind of input for every block output (a slice like Flux's single blocks' text and image halves, any
    batch, any resolution) and never recompile (a view's base and strides would be guarded on)."""
    return t.reshape(-1).detach()


class _CompiledSum:
    """The same sums as `_EagerSum` in four compiled kernels with dynamic shapes, compiled once per device
    and dtype by `prepare_averaging` (when blocks are compiled), so a group of a new size, a new resolution
    or batch never compiles anything at the plan change. Each kernel reads its inputs once."""

    def __init__(self) -> None:
        self.prepared: set[tuple[str, torch.dtype]] = set()
        self._kernels: dict[str, Callable[..., torch.Tensor]] = {}

    def covers(self, parts: list[torch.Tensor]) -> bool:
        return all((p.device.type, p.dtype) in self.prepared for p in parts)

    def _kernel(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        name = fn.__name__
        if name not in self._kernels:
            self._kernels[name] = torch.compile(fn, dynamic=True, fullgraph=True)
        return self._kernels[name]

    def start(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._kernel(_start)(_flat(a), _flat(b))  # (float32 and flat: only ever fed back here)

    def add(self, total: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._kernel(_add)(total, _flat(x))

    def finish(self, total: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
        return self._kernel(_finish)(total, _flat(x), n).view(x.shape)

    def mean2(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._kernel(_mean2)(_flat(a), _flat(b)).view(a.shape)


_EAGER_SUM = _EagerSum()
_COMPILED_SUM = _CompiledSum()


def prepare_averaging(device: torch.device, dtype: torch.dtype) -> None:
    """Compile the parallel groups' averaging kernels for block outputs of `dtype` on `device` now (a few
    seconds, with the blocks' compilation), instead of at the first plan with a group. Dynamo guards on the
    grad mode, so they compile for both modes blocks run in: no_grad (the pipelines' calls) and
    inference_mode (the engine's timing). Raises what torch.compile raises; without it, compiled groups
    average eagerly."""
    key = (device.type, dtype)
    if key in _COMPILED_SUM.prepared:
        return
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            parts = [torch.ones(3, 5, 7, device=device, dtype=dtype) * (i + 1) for i in range(3)]
            total = _COMPILED_SUM.add(_COMPILED_SUM.start(parts[0], parts[1]), parts[2])
            _COMPILED_SUM.finish(total, parts[2], 4)
            _COMPILED_SUM.mean2(parts[0], parts[1])
    _COMPILED_SUM.prepared.add(key)


class Residuals:
    """The residuals of a run's cached spans: for each (stack, bounds, occurrence), the last two steps on
    which the span was computed and what it added to each stream (output minus input, float32). The
    step being run is set by `AppliedPlan.at_step`."""

    def __init__(self) -> None:
        self.step = 0
        self.kept: dict[CacheKey, list[tuple[int, list[torch.Tensor]]]] = {}

    def record(self, key: CacheKey, residuals: list[torch.Tensor]) -> None:
        history = self.kept.setdefault(key, [])
        if history and history[-1][0] == self.step:  # computed twice in one step (a batch split): the last
            history.pop()
        history.append((self.step, residuals))
        del history[:-2]

    def contribution(self, key: CacheKey, mode: str, where: str) -> list[torch.Tensor]:
        """What the span adds at this step: the last residual (`reuse`), or its first-order extrapolation
        from the last two (`forecast`; with one computed step, the last residual)."""
        history = self.kept.get(key)
        if not history:
            raise RuntimeError(f"{where}: nothing to reuse at step {self.step} (no earlier step computed it)")
        step, last = history[-1]
        if mode == "reuse" or len(history) == 1:
            return last
        before_step, before = history[0]
        ahead = (self.step - step) / (step - before_step)
        return [r + (r - b) * ahead for r, b in zip(last, before)]


class CachedSpan(StandIn):
    """A span of blocks run as one unit whose residual is kept: `record` always computes it and keeps the
    residual; `reuse` / `forecast` compute it on the run's first step (and whenever nothing was kept),
    else add the kept residual, or its forecast, to the input streams without running a block."""

    def __init__(self, blocks: list[nn.Module], key: CacheKey, mode: str, residuals: Residuals, io: BlockIO,
                 where: str, check: Check = _no_check) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.key = key
        self.mode = mode
        self.residuals = residuals
        self.io = io
        self.where = where
        self._check = check

    def standing_for(self) -> nn.Module | None:
        return self.blocks[0] if len(self.blocks) else None

    def _inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        out = []
        for name in self.io.outputs:
            if name in kwargs:
                out.append(kwargs[name])
            else:
                position = self.io.inputs.index(name)
                if position >= len(args):
                    raise BlockLayoutError(f"{self.where}: the block was called without {name}")
                out.append(args[position])
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        inputs = self._inputs(args, kwargs)
        computes = self.mode == "record" or self.residuals.step == 0 or self.key not in self.residuals.kept
        if not computes:
            added = self.residuals.contribution(self.key, self.mode, self.where)
            return _pack(self.io, [(x.float() + r).to(x.dtype) for x, r in zip(inputs, added)])
        out: Any = None
        for i, block in enumerate(self.blocks):
            if i:
                self._check()
                args, kwargs = self.io.feed_back(args, kwargs, out, self.where)
            out = block(*args, **kwargs)
        streams = self.io.streams(out, self.where)
        self.residuals.record(self.key, [streams[name].float() - x.float() for name, x in zip(self.io.outputs, inputs)])
        return out



class PlanList(nn.ModuleList):
    """A block list that calls `check` before handing out each block, so a cancel lands between blocks."""

    def __init__(self, modules: list[nn.Module], check: Check = _no_check) -> None:
        super().__init__(modules)
        self._check = check

    def __iter__(self) -> Iterator[nn.Module]:
        for module in self._modules.values():
            self._check()
            yield module


Wrap = Callable[[str, int, nn.Module], nn.Module]  # (stack, block index, block) -> module run in its place


class Placer(Protocol):
    """What a placement that streams blocks in from host memory (engine/placement.py) needs of the
    executor: a stand-in for every call of a block, and the calls each installed set of lists makes."""

    def wrap(self, block: nn.Module) -> nn.Module: ...

    def set_schedule(self, modules: Sequence[nn.Module]) -> None: ...


# The placer of each placed transformer: every application of a plan to it (generation, timing, bench,
# analysis) streams its blocks, whoever applies the plan.
_PLACERS: weakref.WeakKeyDictionary[nn.Module, Placer] = weakref.WeakKeyDictionary()


def set_placer(transformer: nn.Module, placer: Placer | None) -> None:
    if placer is None:
        _PLACERS.pop(transformer, None)
    else:
        _PLACERS[transformer] = placer


def build_list(blocks: nn.ModuleList, order: Order, spec: StackSpec, check: Check = _no_check,
               wrap: Wrap | None = None, keys: frozenset[CacheKey] = frozenset(),
               residuals: Residuals | None = None, placer: Placer | None = None) -> PlanList:
    """The ModuleList of one stack under `order`. `wrap`, if given, stands in for each plain block
    (the similarity analysis records outputs that way, without hooks on compiled blocks). `keys` are the
    plan's cached spans: each cached span of the order, and each plain run of a cached span's blocks
    (which records its residual), becomes one `CachedSpan` sharing `residuals`. `placer`: every call of
    a block goes through its stand-in (a streamed placement)."""
    if placer is not None:
        blocks = nn.ModuleList([placer.wrap(b) for b in blocks])
    slots = {at: (width, key) for at, width, key in cache_slots(spec.name, order, keys)} if keys else {}
    modules: list[nn.Module] = []
    i = 0
    while i < len(order):
        unit = order[i]
        if i in slots:
            width, key = slots[i]
            assert residuals is not None
            mode = unit.mode if isinstance(unit, Cached) else "record"
            members = range(key[1], key[2] + 1)
            where = f"{spec.name} {format_unit(unit) if isinstance(unit, Cached) else f'{key[1]}-{key[2]}'}"
            modules.append(CachedSpan([wrap(spec.name, b, blocks[b]) if wrap else blocks[b] for b in members],
                                      key, mode, residuals, spec.io, where, check))
            i += width
            continue
        if isinstance(unit, Group):
            where = f"{spec.name} group [{format_unit(unit)}]"
            modules.append(ParallelGroup([blocks[m] for m in unit.members], unit.loops, spec.io, where, check))
        else:
            assert isinstance(unit, int)
            modules.append(wrap(spec.name, unit, blocks[unit]) if wrap else blocks[unit])
        i += 1
    return PlanList(modules, check)


class AppliedPlan:
    """Handle of a plan applied to a transformer: `at_step(i)` puts in the block lists of the orders that
    run at denoising step i (the plan's default order, a step table's, or the full model's where
    `active_steps` leaves the step out). The lists of each distinct set of orders are built once, the
    first time a step needs them, and reused at every later step that runs the same orders."""

    def __init__(self, transformer: nn.Module, originals: Mapping[str, nn.ModuleList], plan: Plan, layout: Layout,
                 check: Check, wrap: Wrap | None = None, residuals: Residuals | None = None,
                 placer: Placer | None = None) -> None:
        self._transformer = transformer
        self._placer = placer
        self._originals = originals
        self._plan = plan
        self._layout = layout
        self._check = check
        self._wrap = wrap
        self._built: dict[tuple[Order, ...], dict[str, PlanList]] = {}  # by each stack's order, in layout order
        self._variants: dict[tuple[bool, int | None], dict[str, PlanList]] = {}  # by Plan.variant_at
        self._current: dict[str, PlanList] | None = None
        self._keys = cache_keys(plan)
        self.residuals = residuals if residuals is not None else Residuals()

    def at_step(self, step: int) -> None:
        self.residuals.step = step
        variant = self._plan.variant_at(step)
        lists = self._variants.get(variant)
        if lists is None:
            lists = self._lists(self._plan.resolved_at(self._layout, step))
            self._variants[variant] = lists
        self._put(lists)

    @contextmanager
    def running(self, orders: Mapping[str, Order]) -> Iterator[None]:
        """Within the body the block lists run `orders` (every stack's), then the step's lists again:
        one pass of a guidance-branch plan (engine/branches.py)."""
        before = self._current
        self._put(self._lists(orders))
        try:
            yield
        finally:
            if before is not None:
                self._put(before)

    def _lists(self, orders: Mapping[str, Order]) -> dict[str, PlanList]:
        """The block lists of `orders`, built the first time (two variants may run the same orders: a table
        as the default, the full model)."""
        key = tuple(orders[s.name] for s in self._layout.stacks)
        lists = self._built.get(key)
        if lists is None:
            declared = family(self._layout.family)
            lists = {s.attr: build_list(self._originals[s.attr], orders[s.name], declared.stack(s.name),
                                        self._check, self._wrap, self._keys, self.residuals, self._placer)
                     for s in self._layout.stacks}
            self._built[key] = lists
        return lists

    def _put(self, lists: dict[str, PlanList]) -> None:
        if lists is self._current:
            return
        for attr, module_list in lists.items():
            setattr(self._transformer, attr, module_list)
        self._current = lists
        if self._placer is not None:  # the lists are in layout order: the order the forward runs them
            self._placer.set_schedule([m for module_list in lists.values() for m in module_list._modules.values()])


@contextmanager
def applied(transformer: nn.Module, layout: Layout, plan: Plan, check: Check = _no_check,
            wrap: Wrap | None = None, residuals: Residuals | None = None) -> Iterator[AppliedPlan]:
    """Run the body with `plan` applied at step 0; the original block lists are back afterwards, whatever
    happens inside (exception, cancel, out-of-memory). `residuals`: the cached spans' residuals to start
    from (default: none yet), shared by several applications of one plan (the engine's timing)."""
    originals = {s.attr: getattr(transformer, s.attr) for s in layout.stacks}
    for attr, blocks in originals.items():
        if not isinstance(blocks, nn.ModuleList) or isinstance(blocks, PlanList):
            raise RuntimeError(f"{attr} is not the model's own block list; was a plan left applied?")
    try:
        handle = AppliedPlan(transformer, originals, plan, layout, check, wrap, residuals, _PLACERS.get(transformer))
        handle.at_step(0)
        yield handle
    finally:
        for attr, blocks in originals.items():
            setattr(transformer, attr, blocks)
