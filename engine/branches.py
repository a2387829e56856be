"""Guidance-branch plans: a plan's [uncond] and [extra] tables (engine/core/plan.py `Branch`) run inside
the pipeline's own denoising loop.

The pipelines of CFG families (SD3, AuraFlow) call the transformer once per step on a doubled batch,
the unconditional half and the conditional half (the family's `guidance_halves`), then combine
u + g (c - u) and call the scheduler. Within `branched(...)`:

- on a step where [uncond] applies, the transformer's forward splits the batch: the unconditional half
  runs the branch's orders, the conditional half the plan's orders at that step, each as a call of its
  own (two calls of half the batch instead of one: the same block FLOPs, more launches), and the halves
  are put back together in the pipeline's order;
- on a step where [extra] applies, one more call runs the conditional half with the extra orders (e),
  and the scheduler's step receives the guided prediction plus scale x (c - e), the arithmetic of
  diffusers' Skip Layer Guidance (`noise_pred + (noise_pred_text - noise_pred_skip_layers) * scale`),
  so a plan that skips SD3.5 Medium's blocks 7, 8, 9 on an extra pass is that pipeline's SLG.

A plan without branch tables never enters here: its runs stay bit-exact with the plain pipeline.
The passes reuse the executor's block lists (`AppliedPlan.running`), so compiled blocks stay compiled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from dit_explore.engine.core.families import family
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Plan
from dit_explore.engine.executor import AppliedPlan, Check, Residuals, Wrap, applied


def _batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise RuntimeError("guidance-branch plans: the transformer was called without hidden_states")
    return int(hidden.shape[0])


def _half(value: Any, batch: int, part: slice) -> Any:
    """An argument of the transformer for one half of the batch: a tensor whose first dimension is the
    batch is sliced; anything else (attention kwargs, flags) passes as it is."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
        return value[part]
    return value


def _sample(out: Any) -> torch.Tensor:
    """The prediction in what a transformer returns: `(sample,)` with return_dict=False, else an output
    object with `.sample`."""
    if isinstance(out, tuple):
        return out[0]
    sample = getattr(out, "sample", out)
    assert isinstance(sample, torch.Tensor)
    return sample


def _with_sample(out: Any, sample: torch.Tensor) -> Any:
    if isinstance(out, tuple):
        return (sample, *out[1:])
    if hasattr(out, "sample"):
        return type(out)(sample=sample)
    return sample


@contextlib.contextmanager
def branched(transformer: torch.nn.Module, scheduler: Any | None, layout: Layout, plan: Plan, handle: AppliedPlan,
             step: list[int], halves: tuple[str, str]) -> Iterator[None]:
    """Run the body (the pipeline's call) with `plan`'s guidance branches applied: `step[0]` is the
    current denoising step (the caller's step counter), `halves` the family's guidance_halves. The
    transformer's forward and the scheduler's step are patched on the instances and restored after.
    Without a scheduler (a timed transformer call, engine/timing.py) the extra pass's term is computed
    and dropped."""
    if not plan.has_branches:
        yield
        return
    cond = halves.index("cond")
    uncond_orders = plan.uncond.resolved(layout) if plan.uncond is not None else None
    extra_orders = plan.extra.resolved(layout) if plan.extra is not None else None
    forward = transformer.forward
    scheduler_step = scheduler.step if scheduler is not None else None
    pending: list[torch.Tensor] = []  # the extra pass's term, for this step's scheduler call

    def call(args: tuple[Any, ...], kwargs: dict[str, Any], batch: int, part: slice) -> Any:
        return forward(*(_half(a, batch, part) for a in args), **{k: _half(v, batch, part) for k, v in kwargs.items()})

    def branched_forward(*args: Any, **kwargs: Any) -> Any:
        at = step[0]
        split = uncond_orders is not None and plan.uncond is not None and plan.uncond.applies_at(at)
        extra = extra_orders is not None and plan.extra is not None and plan.extra.applies_at(at)
        if not (split or extra):
            return forward(*args, **kwargs)
        batch = _batch(args, kwargs)
        if batch % 2:
            raise RuntimeError(f"guidance-branch plans: expected the doubled batch of classifier-free guidance, "
                               f"got a batch of {batch}")
        half = batch // 2
        parts = (slice(0, half), slice(half, batch))
        if split:
            assert uncond_orders is not None
            with handle.running(uncond_orders):
                unconditional = call(args, kwargs, batch, parts[1 - cond])
            conditional = call(args, kwargs, batch, parts[cond])
            pair = (conditional, unconditional) if cond == 0 else (unconditional, conditional)
            out = _with_sample(pair[0], torch.cat([_sample(pair[0]), _sample(pair[1])]))
        else:
            out = forward(*args, **kwargs)
        if extra:
            assert extra_orders is not None and plan.extra is not None and plan.extra.scale is not None
            with handle.running(extra_orders):
                skipped = _sample(call(args, kwargs, batch, parts[cond]))
            text = _sample(out)[parts[cond]]
            pending[:] = [(text - skipped) * plan.extra.scale]
        return out

    def guided_step(model_output: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if pending:
            model_output = model_output + pending.pop()
        assert scheduler_step is not None
        return scheduler_step(model_output, *args, **kwargs)

    # Patched on the instances; an instance attribute there before (accelerate's offload hooks set one on
    # forward) is put back as it was, else the class's method shows through again.
    own_forward = transformer.__dict__.get("forward")
    own_step = vars(scheduler).get("step") if scheduler is not None else None
    transformer.forward = branched_forward
    if scheduler is not None:
        scheduler.step = guided_step
    try:
        yield
    finally:
        if own_forward is not None:
            transformer.forward = own_forward
        else:
            del transformer.forward
        if scheduler is not None:
            if own_step is not None:
                scheduler.step = own_step
            else:
                del scheduler.step


@contextlib.contextmanager
def applied_with_branches(transformer: torch.nn.Module, layout: Layout, plan: Plan, step: list[int], *,
                          scheduler: Any | None = None, check: Check | None = None, wrap: Wrap | None = None,
                          residuals: Residuals | None = None) -> Iterator[AppliedPlan]:
    """`executor.applied` and `branched` together, as every caller that runs a plan needs them: the
    plan's block lists in place (the handle yielded), and its guidance branches at step `step[0]`."""
    halves = family(layout.family).guidance_halves or ("uncond", "cond")
    with applied(transformer, layout, plan, check or (lambda: None), wrap, residuals) as handle, \
            branched(transformer, scheduler, layout, plan, handle, step, halves):
        yield handle
