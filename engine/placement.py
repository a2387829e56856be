"""Placements that keep every number: weights that live in host memory and visit the device to run.

engine/core/placement.py decides what stays on the device; this module moves the weights. A `Unit` is a
module whose parameters have a host copy (pinned on CUDA, so copies run asynchronously) and, while it is on
the device, a device copy its parameters point at (`param.data`). The same tensors in the same kernels:
a streamed block computes exactly what a resident one does.

`Residency` holds a loaded pipeline's units:
- each text encoder is a unit, fetched by a forward pre-hook when the family's encode calls it and dropped
  by a forward hook when it returns (text encoders are never compiled, so hooks cost nothing there);
- each block is a unit, run through a `Streamed` stand-in the executor puts wherever the plan calls the
  block (plain, parallel-group member, cached span), so nothing hooks the (compiled) blocks. The stand-in
  waits for its block's copy, starts the copy of the next block the plan will call that is not on the
  device yet, on a side stream, runs the block, and drops it unless it is resident. Streamed blocks take
  turns in two fixed `Slot`s on the device (resident ones keep tensors of their own). The plan's call order
  is read off the block lists the executor installs (`schedule`), so a plan that reorders, repeats or
  groups blocks is prefetched in its own order; a call the schedule did not foresee (a cached span that
  reuses its residual) only costs a prefetch, never a wrong number.

On the CPU everything is in one memory; the same code runs there with copies standing in for the device
(what tests/engine/test_placement.py checks the mechanics with).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from dit_explore.engine.core.placement import SLOTS, Placement
from dit_explore.engine.executor import CachedSpan, ParallelGroup, StandIn

ALIGN = 512  # bytes: where each tensor starts in a slot (any dtype's alignment, and what kernels assume)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Slot:
    """A fixed buffer on the device that streamed blocks take turns in: allocated once, so streaming never
    asks the allocator for anything (its peak is exact, and nothing waits on memory being given back).
    `free_after`: recorded on the compute stream when the last occupant left; the next copy into the slot
    waits for it on the copy stream, never on the host."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.buffer = torch.empty(size, dtype=torch.uint8, device=device)
        self.occupant: Unit | None = None
        self.free_after: torch.cuda.Event | None = None


class Unit:
    """One module's parameters, in host memory and, while fetched, on the device: in a slot (a streamed
    block) or in tensors of its own (an encoder, a resident block)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = device
        self.params = [p for p in module.parameters()]
        pin = device.type == "cuda"
        self.host = [self._host_copy(p.data, pin) for p in self.params]
        for p, h in zip(self.params, self.host):
            p.data = h
        for sub in module.modules():  # buffers (position ids, ...) are small: they stay on the device
            for key, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    sub._buffers[key] = buffer.to(device)
        self.packed = sum(_aligned(h.numel() * h.element_size()) for h in self.host)  # its size in a slot
        self.on_device = False
        self.slot: Slot | None = None
        self._ready: torch.cuda.Event | None = None

    @staticmethod
    def _host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
        host = tensor.detach().to("cpu").contiguous()
        if pin:
            return host.pin_memory()
        return host if host is not tensor else host.clone()  # on the CPU: a copy stands in for the device's

    def fetch(self, stream: torch.cuda.Stream | None, slot: Slot | None = None) -> None:
        """Start copying to the device, into `slot` if given (on `stream`, asynchronously, on CUDA);
        `wait` before use."""
        if self.on_device:
            return
        if slot is not None:
            slot.occupant, self.slot = self, slot
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if slot is not None and slot.free_after is not None and stream is not None:
                stream.wait_event(slot.free_after)  # the compute stream is done with the last occupant
            copies = self._places(slot)
            for c, h in zip(copies, self.host):
                c.copy_(h, non_blocking=stream is not None)
            if stream is not None:
                self._ready = torch.cuda.Event()
                self._ready.record(stream)
        for p, c in zip(self.params, copies):
            p.data = c
        self.on_device = True

    def _places(self, slot: Slot | None) -> list[torch.Tensor]:
        if slot is None:
            return [torch.empty_like(h, device=self.device) for h in self.host]
        places, at = [], 0
        for h in self.host:
            size = h.numel() * h.element_size()
            places.append(slot.buffer.narrow(0, at, size).view(h.dtype).view(h.shape))
            at += _aligned(size)
        return places

    def wait(self) -> None:
        """Make the compute stream wait for the copies; tensors of its own then belong to it (for the
        allocator; a slot is never given back)."""
        if self._ready is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(self._ready)
        if self.slot is None:
            for p in self.params:
                p.data.record_stream(current)
        self._ready = None

    def drop(self) -> None:
        """Point the parameters back at the host copies; the device's memory is free once the compute
        stream is past this point (a slot's next copy waits for that)."""
        if not self.on_device:
            return
        self.wait()
        for p, h in zip(self.params, self.host):
            p.data = h
        if self.slot is not None:
            if self.device.type == "cuda":
                self.slot.free_after = torch.cuda.Event()
                self.slot.free_after.record(torch.cuda.current_stream(self.device))
            self.slot.occupant, self.slot = None, None
        self.on_device = False


class Streamed(StandIn):
    """Runs one block of a streamed transformer, fetching it first (see the module's docstring)."""

    def __init__(self, block: nn.Module, residency: Residency) -> None:
        super().__init__()
        self.block = block
        object.__setattr__(self, "_residency", residency)  # not a submodule: one residency for every block

    def standing_for(self) -> nn.Module | None:
        return self.block

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        residency: Residency = self._residency
        residency.before(self.block)
        out = self.block(*args, **kwargs)
        residency.after(self.block)
        return out


class Residency:
    """The units of a placed pipeline and the policy that moves them (see the module's docstring)."""

    def __init__(self, blocks: Sequence[nn.Module], encoders: Sequence[nn.Module], placement: Placement,
                 device: torch.device) -> None:
        self.placement = placement
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.blocks = {id(b): Unit(b, device) for b in blocks}
        self.order = [id(b) for b in blocks]
        self.resident = set(self.order[:placement.resident_blocks])
        streamed = [self.blocks[key].packed for key in self.order if key not in self.resident]
        # The running block's and the prefetched one's (engine/core/placement.py counts them).
        self.slots = [Slot(max(streamed), device) for _ in range(SLOTS)] if streamed else []
        self.encoders = [Unit(e, device) for e in encoders]
        self.schedule: list[int] = []
        self._cursor = 0  # where the schedule is expected to go on
        self._at: int | None = None  # the schedule position of the block running
        self.fetches = 0  # blocks copied in (a test and the bench read it)
        self.log: list[str] | None = None  # when a list: "fetch i" / "drop i" by block index, in order
        self._index = {key: i for i, key in enumerate(self.order)}
        self._hooks: list[Any] = []
        for unit in self.encoders:
            self._hooks.append(unit.module.register_forward_pre_hook(self._encoder_in(unit), with_kwargs=True))
            # always_call: an encoder interrupted by a cancel (or any error) still leaves the device.
            self._hooks.append(unit.module.register_forward_hook(self._encoder_out(unit), always_call=True))
        for key in self.order:
            if key in self.resident:
                self._fetch(key)
        self._wait_all()

    # ------------------------------------------------------------------------------------ blocks

    def wrap(self, block: nn.Module) -> nn.Module:
        """The module the executor runs in `block`'s place: itself if it never leaves the device."""
        return Streamed(block, self) if id(block) in self.blocks and self.placement.streams else block

    def set_schedule(self, lists: Sequence[nn.Module]) -> None:
        """The block calls one transformer call makes under the lists just installed, in order."""
        self.schedule = [id(b) for b in _calls(lists) if id(b) in self.blocks]
        self._cursor, self._at = 0, None
        for key in self.order:  # what the last schedule prefetched: at most two streamed blocks at a time
            if key not in self.resident and self.blocks[key].on_device:
                self._drop(key)

    def before(self, block: nn.Module) -> None:
        key = id(block)
        unit = self.blocks[key]
        if not unit.on_device:
            self._fetch(key)
        unit.wait()
        self._at = self._position(key)
        if self._at is not None:
            self._cursor = (self._at + 1) % len(self.schedule)
        following = self._upcoming()
        if following is not None and not self.blocks[following].on_device:
            self._fetch(following)

    def after(self, block: nn.Module) -> None:
        key = id(block)
        if key not in self.resident and (self._at is None or self._upcoming() != key):
            self._drop(key)

    def _position(self, key: int) -> int | None:
        """Where the schedule calls `key` next, from the cursor on (None: the schedule never does)."""
        n = len(self.schedule)
        for offset in range(n):
            at = (self._cursor + offset) % n
            if self.schedule[at] == key:
                return at
        return None

    def _upcoming(self) -> int | None:
        """The first block after the current call that will need its copy: streamed, or resident but not on
        the device (evicted for encoding); one transformer call ahead at most, the next call's first blocks
        included (the schedule repeats every step)."""
        if self._at is None:
            return None
        n = len(self.schedule)
        for offset in range(1, n + 1):
            candidate = self.schedule[(self._at + offset) % n]
            if candidate not in self.resident or not self.blocks[candidate].on_device:
                return candidate
        return None

    def _fetch(self, key: int) -> None:
        self.blocks[key].fetch(self.stream, None if key in self.resident else self._free_slot())
        self.fetches += 1
        if self.log is not None:
            self.log.append(f"fetch {self._index[key]}")

    def _free_slot(self) -> Slot:
        """A slot for a streamed block: a free one, else the one a prefetched block holds (a call the
        schedule did not foresee: the prefetch is given up, never the block running)."""
        for slot in self.slots:
            if slot.occupant is None:
                return slot
        running = None if self._at is None else self.schedule[self._at]
        for slot in self.slots:
            assert slot.occupant is not None
            if id(slot.occupant.module) != running:
                self._drop(id(slot.occupant.module))
                return slot
        raise RuntimeError("no slot free for a streamed block")

    def _drop(self, key: int) -> None:
        self.blocks[key].drop()
        if self.log is not None:
            self.log.append(f"drop {self._index[key]}")

    def _wait_all(self) -> None:
        for unit in self.blocks.values():
            unit.wait()

    def evict_blocks(self) -> None:
        """Every block off the device (they come back as the next denoising calls them)."""
        for key in self.order:
            if self.blocks[key].on_device:
                self._drop(key)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------- encoders

    def _encoder_in(self, unit: Unit) -> Any:
        """Fetch the encoder, and bring its inputs along: diffusers puts them where the encoder's weights
        were (host memory) a moment before."""
        device = self.device

        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            if self.placement.evict_for_encoding:
                self.evict_blocks()
            unit.fetch(self.stream)
            unit.wait()
            moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
            return tuple(moved), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return hook

    def _encoder_out(self, unit: Unit) -> Any:
        def hook(_module: nn.Module, _args: Any, _out: Any) -> None:
            unit.drop()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return hook

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _calls(modules: Sequence[nn.Module]) -> Iterator[nn.Module]:
    """The blocks a list of executor modules calls, in order: a parallel group's members (its loops
    times), a cached span's blocks, what any other stand-in (a streamed block, a capture) stands for."""
    for module in modules:
        if isinstance(module, ParallelGroup):
            for _ in range(module.loops):
                yield from _calls(list(module.members))
        elif isinstance(module, CachedSpan):
            yield from _calls(list(module.blocks))
        elif isinstance(module, StandIn):
            inner = module.standing_for()
            if inner is not None:
                yield from _calls([inner])
        else:
            yield module


def place(pipe: Any, placement: Placement | None, device: torch.device, stacks: Sequence[str],
          text_slots: Sequence[str]) -> Residency | None:
    """Put `pipe` (anywhere: host memory, or the device) where `placement` says and return the residency
    that moves its units, or None for `full` (or None: the whole pipeline on the device). `stacks`: the
    transformer's block-list attributes; `text_slots`: the pipeline's text-encoder attributes."""
    if placement is None or placement.setting == "full":
        pipe.to(device)
        return None
    transformer = pipe.transformer
    blocks = [b for attr in stacks for b in getattr(transformer, attr)]
    encoders = [m for m in (getattr(pipe, slot, None) for slot in text_slots) if isinstance(m, nn.Module)]
    residency = Residency(blocks, encoders, placement, device)
    # What stays: the transformer outside its blocks, the VAE, anything else the pipeline holds.
    for name, child in transformer.named_children():
        if name not in stacks:
            child.to(device)
    for value in transformer._parameters.values():
        if value is not None:
            value.data = value.data.to(device)
    for key, value in list(transformer._buffers.items()):
        if value is not None:
            transformer._buffers[key] = value.to(device)
    for module in vars(pipe).values():
        if isinstance(module, nn.Module) and module is not transformer and not any(module is e for e in encoders):
            module.to(device)
    return residency
