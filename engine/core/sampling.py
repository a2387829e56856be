"""Sampling settings of one image, resolved in one place from model defaults, plan file and command line
(or the TUI's form); what a plan costs in block executions; and what an image cost in time. Torch-free:
the engine validates requests with it before any model work, and the TUI predicts costs with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from dit_explore.engine.core.families import Defaults
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import (
    MAX_PROMPT,
    Order,
    Plan,
    PlanError,
    Sampling,
    check_sampling,
    computing,
    executions,
    has_cached,
)
from dit_explore.engine.core.resolve import ModelSource

MAX_PROMPTS = 1000  # prompts in one request or prompts file


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Sampling parameters of one image, fully resolved."""

    seed: int
    steps: int
    width: int
    height: int
    guidance: float
    max_sequence_length: int | None

    def for_prompt(self, prompt: str) -> Sampling:
        """These settings as a plan file's [sampling] table: what reproduces one image."""
        return Sampling(prompt=prompt, seed=self.seed, steps=self.steps, width=self.width, height=self.height,
                        guidance=self.guidance)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(defaults: Defaults, *layers: Sampling) -> Settings:
    """Model defaults, overridden by each of `layers` in turn (plan file, then command line or form).
    The one place where an unset field falls back to the model's default."""
    merged = Sampling()
    for layer in layers:
        merged = merged.merged(layer)
    return Settings(
        seed=merged.seed if merged.seed is not None else 0,
        steps=merged.steps if merged.steps is not None else defaults.steps,
        width=merged.width if merged.width is not None else defaults.width,
        height=merged.height if merged.height is not None else defaults.height,
        guidance=merged.guidance if merged.guidance is not None else defaults.guidance,
        max_sequence_length=defaults.max_sequence_length,
    )


def check_prompts(prompts: Sequence[str], where: str) -> tuple[str, ...]:
    """The prompts of a request, stripped; PlanError (one line) if there are none or one is blank. The
    one prompt check of the CLI, the engine and the TUI."""
    if not prompts:
        raise PlanError([f"{where}: give at least one prompt"])
    if any(not p.strip() for p in prompts):
        raise PlanError([f"{where}: a prompt must not be empty"])
    if len(prompts) > MAX_PROMPTS:
        raise PlanError([f"{where}: at most {MAX_PROMPTS} prompts in one run, got {len(prompts)}"])
    longest = max(len(p) for p in prompts)
    if longest > MAX_PROMPT:
        raise PlanError([f"{where}: a prompt may have at most {MAX_PROMPT} characters, got one of {longest}"])
    return tuple(p.strip() for p in prompts)


def field_problems(sampling: Sampling, source: ModelSource) -> dict[str, str]:
    """Why each set field of `sampling` cannot run on `source` (field -> one line); empty when all can.
    What the TUI's form shows as you type, and the same rules the CLI and the engine apply."""
    problems: dict[str, str] = {}
    try:
        check_sampling(replace(sampling, prompt=None), "")
    except PlanError as exc:
        for line in exc.problems:
            name, _, why = line.partition(": ")
            problems[name] = why
    for name in ("width", "height"):
        value = getattr(sampling, name)
        if name not in problems and value is not None:
            problem = source.size_problem(name, value)
            if problem is not None:
                problems[name] = problem
    return problems


# ------------------------------------------------------------------------------------------- costs


def executions_per_step(plan: Plan, layout: Layout) -> tuple[int, int]:
    """Block executions one denoising step costs under `plan`'s default order (where it applies), and
    under the full model: the predicted cost the plan line shows. `block_runs` counts each step."""
    orders = plan.resolved(layout)
    return sum(executions(o) for o in orders.values()), layout.total_blocks


@dataclass(frozen=True, kw_only=True)
class BlockRuns:
    """Block executions per step and stack under a plan, next to the full model's."""

    full_per_step: dict[str, int]
    # A plan with guidance-branch tables counts each pass by the share of the doubled batch it runs (the
    # conditional and the unconditional half a half each, an extra pass on the conditional half a half),
    # so its counts can end in .5; every other plan's are whole numbers.
    per_step: tuple[dict[str, float], ...]
    total: float
    full_total: int

    @property
    def predicted_speedup(self) -> float | None:
        """Full model's block executions over the plan's (None when the plan runs no block)."""
        return self.full_total / self.total if self.total else None


def block_runs(plan: Plan, layout: Layout, steps: int) -> BlockRuns:
    """What `plan` costs over `steps` denoising steps, per step and stack (active_steps and step tables
    respected: each step counts the orders it runs; a cached span counts its blocks on the first step,
    where it computes, and nothing after)."""
    full = {s.name: s.blocks for s in layout.stacks}
    if plan.has_branches:
        return _branch_runs(plan, layout, steps, full)
    counts: dict[tuple[tuple[bool, int | None], bool], dict[str, int]] = {}  # each variant counted once
    for step in range(steps):
        key = (plan.variant_at(step), step == 0)
        if key not in counts:
            counts[key] = {name: executions(order, computing=step == 0)
                           for name, order in plan.resolved_at(layout, step).items()}
    per_step: tuple[dict[str, float], ...] = tuple(dict(counts[(plan.variant_at(step), step == 0)]) for step in range(steps))
    return BlockRuns(full_per_step=full, per_step=per_step, total=sum(sum(s.values()) for s in per_step),
                     full_total=sum(full.values()) * steps)


def _branch_runs(plan: Plan, layout: Layout, steps: int, full: dict[str, int]) -> BlockRuns:
    """block_runs of a plan with [uncond] or [extra] (see BlockRuns.per_step for the unit)."""
    def counted(orders: dict[str, Order]) -> dict[str, int]:
        return {name: executions(order) for name, order in orders.items()}

    own = {name: (branch, counted(branch.resolved(layout))) for name, branch in plan.branches}  # counted once
    nothing = dict.fromkeys(full, 0)
    per_step = []
    for step in range(steps):
        cond = counted(plan.resolved_at(layout, step))
        u, e = own.get("uncond"), own.get("extra")
        uncond = u[1] if u is not None and u[0].applies_at(step) else cond
        extra = e[1] if e is not None and e[0].applies_at(step) else nothing
        per_step.append({name: (cond[name] + uncond[name] + extra[name]) / 2 for name in full})
    return BlockRuns(full_per_step=full, per_step=tuple(per_step), total=sum(sum(s.values()) for s in per_step),
                     full_total=sum(full.values()) * steps)


def step_variants(plan: Plan, layout: Layout, steps: int) -> tuple[tuple[Plan, int], ...]:
    """The distinct sets of orders a run of `steps` steps goes through, in order of their first step: each
    as a plan of one default order (no step tables, no active_steps), with the number of steps that run
    it. What the engine times, one set at a time, to measure a per-step plan against the full model. The
    first step of a plan with cached spans is a set of its own, with those spans computed (as they are
    there); on the other steps they are reused. A plan's guidance branches ride along on the steps they
    apply to, each as a branch of every step (no window), so that a timed call runs the step's passes."""
    found: list[Plan] = []
    counts: list[int] = []
    # (variant, first step, [uncond] applies, [extra] applies) -> position in `found`
    where: dict[tuple[tuple[bool, int | None], bool, bool, bool], int] = {}
    first_computes = has_cached(plan)
    for step in range(steps):
        uncond = plan.uncond is not None and plan.uncond.applies_at(step)
        extra = plan.extra is not None and plan.extra.applies_at(step)
        variant = (plan.variant_at(step), first_computes and step == 0, uncond, extra)
        if variant not in where:
            orders = plan.resolved_at(layout, step)
            if variant[1]:
                orders = {name: computing(order) for name, order in orders.items()}
            one = Plan(orders=tuple(sorted(orders.items())),
                       uncond=replace(plan.uncond, steps=None) if uncond and plan.uncond is not None else None,
                       extra=replace(plan.extra, steps=None) if extra and plan.extra is not None else None)
            if one not in found:  # two variants may run the same orders (the full model, say)
                found.append(one)
                counts.append(0)
            where[variant] = found.index(one)
        counts[where[variant]] += 1
    return tuple(zip(found, counts))


# ------------------------------------------------------------------------------------------ timing


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Seconds one image took: measured with CUDA events on a GPU (engine/timing.py)."""

    total: float
    text_encode: float  # 0.0 when the embeddings came from the cache
    text_encode_cached: bool
    transformer_steps: tuple[float, ...]  # transformer forward time of each denoising step
    decode: float

    @property
    def transformer_total(self) -> float:
        return sum(self.transformer_steps)

    @property
    def warm_steps(self) -> int:
        """Steps after the first (the first pays warm-up: allocations, kernel selection, compilation)."""
        return max(0, len(self.transformer_steps) - 1)

    @property
    def warm_step(self) -> float | None:
        """Median transformer seconds per step, the first step excluded; None with no warm step."""
        warm = sorted(self.transformer_steps[1:])
        if not warm:
            return None
        mid = len(warm) // 2
        return warm[mid] if len(warm) % 2 else (warm[mid - 1] + warm[mid]) / 2
