"""Sampling settings of one image, resolved from model defaults, plan file and command line; and what
a plan costs in block executions. Torch-free: the engine validates requests with it before any model
work, and the TUI predicts costs with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.plan import Plan, Sampling, executions
from engine.resolve import ModelSource


@dataclass(frozen=True)
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
        return {
            "seed": self.seed,
            "steps": self.steps,
            "width": self.width,
            "height": self.height,
            "guidance": self.guidance,
            "max_sequence_length": self.max_sequence_length,
        }


def resolve_settings(source: ModelSource, *layers: Sampling) -> Settings:
    """Model defaults, overridden by each of `layers` in turn (plan file, then command line)."""
    merged = Sampling()
    for layer in layers:
        merged = merged.merged(layer)
    d = source.defaults
    return Settings(
        seed=merged.seed if merged.seed is not None else 0,
        steps=merged.steps if merged.steps is not None else d.steps,
        width=merged.width if merged.width is not None else d.width,
        height=merged.height if merged.height is not None else d.height,
        guidance=merged.guidance if merged.guidance is not None else d.guidance,
        max_sequence_length=d.max_sequence_length,
    )


def block_runs(plan: Plan, source: ModelSource, steps: int) -> dict[str, Any]:
    """Block executions per step and stack under `plan`, next to the full model's."""
    full = {s.name: s.blocks for s in source.layout.stacks}
    orders = plan.resolved(source.layout)
    planned = {name: executions(order) for name, order in orders.items()}
    per_step = [planned if plan.applies_at(step) else full for step in range(steps)]
    return {
        "full_per_step": full,
        "per_step": per_step,
        "total": sum(sum(s.values()) for s in per_step),
        "full_total": sum(full.values()) * steps,
    }
