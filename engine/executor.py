"""Apply a plan to a loaded transformer by swapping its block lists.

Every strategy is an order over a stack's blocks, so the executor replaces each stack's `nn.ModuleList`
with one built from the plan (the original block objects, reused; a `ParallelGroup` for parallel
groups), lets the model's own `forward` loop run it, and restores the originals in a `finally`. The
pipeline stays untouched, the same code serves Flux, SD3 and AuraFlow, and blocks compiled one by one
stay compiled across plan changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from engine.layout import Layout
from engine.plan import Group, Order, Plan

Check = Callable[[], None]  # raises (e.g. Cancelled) to stop between block executions


class Cancelled(Exception):
    """Raised between two block executions when a run is cancelled."""


def _no_check() -> None:
    return None


class ParallelGroup(nn.Module):
    """Members get the same input; each output stream is averaged over members; `loops` times over.

    Blocks return either one tensor (AuraFlow single blocks) or `(encoder_hidden_states,
    hidden_states)` (double-stream blocks and Flux single blocks); both streams are averaged and fed
    back as the next loop's input. The average accumulates in float32 so it does not depend on the
    member order.
    """

    # SD3's forward reads `block.context_pre_only` when a ControlNet is attached; a group never holds
    # SD3's context-pre-only block (plan validation forbids it), so it behaves like any full block.
    context_pre_only = False

    def __init__(self, members: list[nn.Module], loops: int, check: Check = _no_check) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.loops = loops
        self._check = check

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out: Any = None
        for loop in range(self.loops):
            if loop:
                args, kwargs = _feed_back(args, kwargs, out)
            out = self._average(args, kwargs)
        return out

    def _average(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.fused:
            return self._average_fused(args, kwargs)
        sums: list[torch.Tensor] | None = None
        dtypes: list[torch.dtype] = []
        tuple_out = False
        for i, member in enumerate(self.members):
            if i:
                self._check()
            out = member(*args, **kwargs)
            tuple_out = isinstance(out, tuple)
            parts = list(out) if tuple_out else [out]
            if sums is None:
                dtypes = [p.dtype for p in parts]
                sums = [p.to(torch.float32, copy=True) for p in parts]
            else:
                for s, p in zip(sums, parts):
                    s.add_(p)
        assert sums is not None
        n = len(self.members)
        means = [s.div_(n).to(dtype) for s, dtype in zip(sums, dtypes)]
        return tuple(means) if tuple_out else means[0]

    def _average_fused(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """With compiled blocks the elementwise averaging above costs a noticeable share of a group (each
        pass over the outputs is a kernel): keep every member's output, then average each stream in one
        compiled kernel (float32 inside, same result). It compiles once per group size."""
        outs = []
        for i, member in enumerate(self.members):
            if i:
                self._check()
            outs.append(member(*args, **kwargs))
        if isinstance(outs[0], tuple):
            return tuple(_fused_mean(len(outs))([o[k] for o in outs]) for k in range(len(outs[0])))
        return _fused_mean(len(outs))(outs)

    @property
    def fused(self) -> bool:
        return any(getattr(m, "_compiled_call_impl", None) is not None for m in self.members)


@functools.cache
def _fused_mean(count: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def mean(tensors: list[torch.Tensor]) -> torch.Tensor:
        total = tensors[0].float()
        for t in tensors[1:]:
            total = total + t.float()
        return (total / count).to(tensors[0].dtype)

    return torch.compile(mean, fullgraph=True, dynamic=False)


def _feed_back(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The next loop's call: the averaged streams replace the stream inputs, everything else is kept."""
    if isinstance(out, tuple):
        encoder, hidden = out
        streams = {"hidden_states": hidden, "encoder_hidden_states": encoder}
        positions = ("hidden_states", "encoder_hidden_states")  # positional order of every block type
    else:
        streams = {"hidden_states": out}
        positions = ("hidden_states",)
    new_args = list(args)
    kwargs = dict(kwargs)
    for pos, name in enumerate(positions):
        if name in kwargs:
            kwargs[name] = streams[name]
        elif pos < len(new_args):
            new_args[pos] = streams[name]
        else:
            raise TypeError(f"parallel group cannot feed back {name}: the block was called without it")
    return tuple(new_args), kwargs


class PlanList(nn.ModuleList):
    """A block list that calls `check` before handing out each block, so a cancel lands between blocks."""

    def __init__(self, modules: list[nn.Module], check: Check = _no_check) -> None:
        super().__init__(modules)
        self._check = check

    def __iter__(self) -> Iterator[nn.Module]:
        for module in self._modules.values():
            self._check()
            yield module  # type: ignore[misc]


Wrap = Callable[[str, int, nn.Module], nn.Module]  # (stack, block index, block) -> module run in its place


def build_list(blocks: nn.ModuleList, order: Order, check: Check = _no_check, stack: str = "",
               wrap: Wrap | None = None) -> PlanList:
    """The ModuleList of one stack under `order`. `wrap`, if given, stands in for each plain block
    (the similarity analysis records outputs that way, without hooks on compiled blocks)."""
    modules: list[nn.Module] = []
    for unit in order:
        if isinstance(unit, Group):
            modules.append(ParallelGroup([blocks[m] for m in unit.members], unit.loops, check))
        else:
            modules.append(wrap(stack, unit, blocks[unit]) if wrap else blocks[unit])
    return PlanList(modules, check)


class AppliedPlan:
    """Handle of a plan applied to a transformer: `at_step(i)` switches between the plan's lists and the
    full model's lists, for plans with `active_steps`."""

    def __init__(self, transformer: nn.Module, originals: Mapping[str, nn.ModuleList], plan: Plan, layout: Layout,
                 check: Check, wrap: Wrap | None = None) -> None:
        self._transformer = transformer
        self._plan = plan
        orders = plan.resolved(layout)
        self._plan_lists = {
            s.attr: build_list(originals[s.attr], orders[s.name], check, s.name, wrap) for s in layout.stacks
        }
        self._full_lists = {
            s.attr: build_list(originals[s.attr], tuple(range(s.blocks)), check, s.name, wrap) for s in layout.stacks
        }
        self._active: bool | None = None

    def at_step(self, step: int) -> None:
        active = self._plan.applies_at(step)
        if active == self._active:
            return
        lists = self._plan_lists if active else self._full_lists
        for attr, module_list in lists.items():
            setattr(self._transformer, attr, module_list)
        self._active = active


@contextmanager
def applied(transformer: nn.Module, layout: Layout, plan: Plan, check: Check = _no_check,
            wrap: Wrap | None = None) -> Iterator[AppliedPlan]:
    """Run the body with `plan` applied at step 0; the original block lists are back afterwards, whatever
    happens inside (exception, cancel, out-of-memory)."""
    originals = {s.attr: getattr(transformer, s.attr) for s in layout.stacks}
    for attr, blocks in originals.items():
        if not isinstance(blocks, nn.ModuleList) or isinstance(blocks, PlanList):
            raise RuntimeError(f"{attr} is not the model's own block list; was a plan left applied?")
    try:
        handle = AppliedPlan(transformer, originals, plan, layout, check, wrap)
        handle.at_step(0)
        yield handle
    finally:
        for attr, blocks in originals.items():
            setattr(transformer, attr, blocks)
