"""Dynamic caches, traced and replayed: `dit-explore run MODEL --cache first-block:T --trace-plan FILE`.

diffusers' FirstBlockCache (diffusers.hooks, `transformer.enable_cache(FirstBlockCacheConfig(threshold))`)
runs the model's first block on every step and compares what it added with what it added on the last
step that ran everything: when the relative mean change is at most the threshold, it skips every other
block and adds the rest of the model's residual from that step instead. Which steps ran everything is
decided on the fly. Traced here (a pre-hook on the second block's first submodule sees every step on
which the tail really ran), that decision becomes a static plan: on the steps that ran everything, the
full model (a `[[steps]]` table with no order); on the others, the first block and every other block as
cached spans (`0, 1-5@reuse` and `0-11@reuse` on toy-flux). Reusing each stack's residual adds up to
the tail's residual (the streams pass from one stack to the next unchanged), taken from the same step,
so the replay draws the dynamic run's image at its cost.

Which families: FirstBlockCache needs diffusers' cache hooks on the transformer (`CacheMixin`) and its
blocks in diffusers' `TransformerBlockRegistry`. In diffusers 0.42 Flux has both; SD3's transformer has
no `enable_cache` (its JointTransformerBlock is registered, but the model class does not mix the hooks
in), and neither has AuraFlow's (whose blocks are not registered either).

`--cache mag:T`: diffusers' MagCache (`MagCacheConfig`) runs every block or none. On a step it skips,
the first block returns its input plus the residual of the whole model (the last block's output minus
the first block's input) from the last step that ran, and every other block returns its input; it skips
while the error accumulated from the checkpoint's magnitude ratios stays under T (at most 3 steps in a
row, never in the first fifth of the steps). Those ratios depend on the checkpoint: diffusers ships
FLUX.1-dev's; for any other model (the toys, a random-weight architecture) the run here starts with
MagCache's own calibration run (`calibrate=True`, no block skipped) on the same prompt and settings,
whose ratios it then uses (recorded in run.json). Its trace becomes the plan with no block run on the
skipped steps: each stack wholly reused (`0-5@reuse` and `0-11@reuse` on toy-flux), the same residual
split into each stack's share. TaylorSeer (diffusers 0.42) forecasts attention outputs, not blocks, so
it has no static replay in this plan language.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.layout import Layout

CACHES = ("first-block", "mag")
NAMES = {"first-block": "FirstBlockCache", "mag": "MagCache"}
USUAL = {"first-block": "0.05 to 0.3", "mag": "0.02 to 0.3"}
UNSUPPORTED = ("needs diffusers' cache hooks on the transformer: in diffusers 0.42 only the flux family has them "
               "(SD3's and AuraFlow's transformers have no enable_cache)")


def parse_cache(text: str) -> tuple[str, float]:
    """The cache and threshold of `first-block:T` or `mag:T` (T > 0, finite); ValueError with one line
    otherwise."""
    kind, _, value = text.partition(":")
    if kind not in CACHES:
        raise ValueError(f"--cache {text!r}: unknown cache (known: {', '.join(f'{c}:THRESHOLD' for c in CACHES)})")
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"--cache {text!r}: the threshold must be a number, like {kind}:0.2") from None
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"--cache {text!r}: the threshold must be above 0 ({USUAL[kind]} are usual)")
    return kind, threshold


def supported(family: str, kind: str = "first-block") -> str | None:
    """Why a family cannot run the cache (None: it can)."""
    return None if family == "flux" else f"{NAMES[kind]} {UNSUPPORTED}"


@dataclass
class Trace:
    """What one run under the cache did: the steps on which every block ran, in order."""

    computed: list[int] = field(default_factory=list)
    step: int = 0  # the step being run (set from the generator's per-step callback)
    ratios: list[float] = field(default_factory=list)  # MagCache's calibration: one magnitude ratio per step

    def on_step(self, done: int, total: int, latents: Any) -> None:
        self.step = done

    def saw_tail(self) -> None:
        if not self.computed or self.computed[-1] != self.step:
            self.computed.append(self.step)


def _probe(transformer: Any, layout: Layout) -> Any:
    """The first submodule of the block after the first: it runs exactly when the tail runs."""
    first = layout.stacks[0]
    if first.blocks > 1:
        block = getattr(transformer, first.attr)[1]
    else:
        block = getattr(transformer, layout.stacks[1].attr)[0]
    return next(block.children())


@contextmanager
def first_block_cache(transformer: Any, layout: Layout, threshold: float) -> Iterator[Trace]:
    """Run the body with diffusers' FirstBlockCache on `transformer`; yields the Trace the run fills (pass
    its `on_step` to the generator). The cache and the probe are gone afterwards, whatever happens."""
    from diffusers import FirstBlockCacheConfig

    trace = Trace()
    handle = _probe(transformer, layout).register_forward_pre_hook(lambda module, args: trace.saw_tail())
    try:
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        try:
            yield trace
        finally:
            transformer.disable_cache()
    finally:
        handle.remove()


@contextmanager
def mag_cache(transformer: Any, layout: Layout, threshold: float, steps: int,
              ratios: list[float] | None) -> Iterator[Trace]:
    """Run the body with diffusers' MagCache on `transformer` for a run of `steps` steps: with `ratios`
    (the calibrated magnitude ratios, one per step) at `threshold`; without, MagCache's calibration run
    (nothing skipped), whose ratios the yielded Trace's `ratios` holds afterwards. Cache, probe and the
    calibration's tap are gone afterwards, whatever happens."""
    from diffusers import MagCacheConfig
    from diffusers.hooks.mag_cache import MagCacheBlockHook

    trace = Trace()
    handle = _probe(transformer, layout).register_forward_pre_hook(lambda module, args: trace.saw_tail())
    calibrate = MagCacheBlockHook._perform_calibration_step

    def tapped(hook: Any, state: Any, residual: Any) -> None:  # MagCache's own calibration, its ratios kept
        calibrate(hook, state, residual)
        trace.ratios.append(float(state.calibration_ratios[-1]))

    try:
        if ratios is None:
            MagCacheBlockHook._perform_calibration_step = tapped
            config = MagCacheConfig(calibrate=True, num_inference_steps=steps)
        else:
            config = MagCacheConfig(threshold=threshold, num_inference_steps=steps, mag_ratios=list(ratios))
        transformer.enable_cache(config)
        try:
            yield trace
        finally:
            transformer.disable_cache()
    finally:
        MagCacheBlockHook._perform_calibration_step = calibrate
        handle.remove()


def trace_plan(layout: Layout, computed: list[int], steps: int, *, name: str, note: str,
               head: bool = True) -> plans.Plan:
    """The static plan of a trace: the full model on the `computed` steps; on the rest, the first block
    run and every other block as reused spans (`head`, FirstBlockCache), or every block reused (MagCache).
    See the module. No step skipped: the full model."""
    if len(computed) >= steps:
        return plans.Plan(name=name, note=note)
    orders: list[tuple[str, plans.Order]] = []
    for i, stack in enumerate(layout.stacks):
        start = 1 if i == 0 and head else 0
        head_units: plans.Order = (0,) if i == 0 and head else ()
        tail: plans.Order = (plans.Cached(start, stack.last, "reuse"),) if stack.blocks > start else ()
        orders.append((stack.name, head_units + tail))
    return plans.Plan(orders=tuple(sorted(orders)), name=name, note=note,
                      step_orders=(plans.StepTable(tuple(sorted(computed))),))
