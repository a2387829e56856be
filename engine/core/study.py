"""The study's six strategies over a block range, as plan files.

"Transformer Layers as Painters" probes a model's middle layers with: skipping the first block (a
"translation" layer, for contrast), skipping the middle, repeating its center block, reversing it, and
running it in parallel, once and looped. saved_plans/ holds these for the real models, and
`dit-explore plans MODEL --from-groups DIR` writes them for each middle group an analysis found.

Torch-free.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.layout import Layout


def skip_plans(layout: Layout) -> dict[str, plans.Plan]:
    """The benchmark's skip plans: 5, 10 and 19 blocks from the middle of the model's largest stack (its
    first and last block kept; SD3's last block must stay), named "skip K". `dit-explore bench` times
    them against their ideal, and the explorer's latency benchmark runs the same ones."""
    stack = max(layout.stacks, key=lambda s: s.blocks)
    n, usable = stack.blocks, stack.blocks - 2
    out: dict[str, plans.Plan] = {}
    for k in sorted({min(k, usable) for k in (5, 10, 19)}):
        if k < 1:
            continue
        first = 1 + (usable - k) // 2
        out[f"skip {k}"] = plans.Plan().with_order(stack.name, plans.parse_order(f"0-{first - 1}, {first + k}-{n - 1}"))
    return out


def shipped_plans_dir() -> Path:
    """The saved_plans folder installed with dit-explore (package data: MODEL/*.plan.toml)."""
    return Path(str(files("dit_explore.saved_plans")))


@dataclass(frozen=True)
class StudyPlan:
    stem: str  # file name without .plan.toml
    plan: plans.Plan
    comment: str

    def save(self, folder: Path) -> Path:
        return plans.save(self.plan, folder / f"{self.stem}{plans.PLAN_SUFFIX}", comment=self.comment)


def study_plans(model: str, layout: Layout, stack: str, first: int, last: int, why: str,
                prefix: str = "") -> list[StudyPlan]:
    """The six strategies over blocks first..last of `stack`; `why` says why this range (a comment)."""
    n = layout.stack(stack).blocks
    if not 0 <= first <= last < n:
        raise ValueError(f"{stack} {first}-{last}: not a range of the {n} blocks of {stack}")
    center, length = (first + last) // 2, last - first + 1
    span = plans.span_text(first, last)  # "5", not "5-5"
    blocks, times = (f"{length} blocks", f"{length} times") if length > 1 else ("1 block", "once")
    head = [f"0-{first - 1}"] if first > 0 else []
    tail = [f"{last + 1}-{n - 1}"] if last < n - 1 else []

    def order(*middle: str) -> str:
        return ", ".join(head + list(middle) + tail)

    strategies = [
        ("1-skip-first-block", "skip first block", f"1-{n - 1}" if n > 1 else "",
         f"Skips {stack} block 0 alone. The study calls the first layers 'translation' layers: expect a far "
         f"larger change than from skipping any one middle block."),
        ("2-skip-middle", f"skip middle {span}", order(),
         f"Skips the middle range {span} ({blocks}). If the middle blocks share a representation "
         f"space, the image degrades gracefully instead of collapsing."),
        ("3-middle-repeat", f"middle repeat {center} x{length}", order(f"{center}*{length}"),
         f"Replaces the middle range {span} by its center block {center} run {times} (same cost "
         f"as the full model). In the LLM study this hurt more than skipping the range: the middle layers share "
         f"a space but do different work."),
        ("4-reverse", f"reverse middle {span}", order(f"{last}-{first}"),
         f"Runs the middle range {span} backwards: how much does the order of the middle blocks matter?"),
        ("5-parallel", f"parallel {span}", order(f"[{first}-{last}]"),
         f"Runs the middle blocks {span} side by side on the same input and averages their outputs, "
         f"as one wide layer."),
        ("6-looped-parallel", f"looped parallel {span} x3", order(f"[{first}-{last}]x3"),
         f"Runs the parallel group {span} three times, feeding the averaged output back in (the "
         f"study's looped parallel)."),
    ]
    out = []
    for stem, title, text, note in strategies:
        plan = plans.Plan(model=model, name=f"{stack}: {title}", note=note).with_order(stack, plans.parse_order(text))
        plans.validate(plan, layout)
        comment = f"{model}: {title} ({stack} stack, {n} blocks).\nRange {span}: {why}"
        comment = "\n".join(textwrap.fill(line, 98) for line in comment.splitlines())
        out.append(StudyPlan(f"{prefix}{stem}", plan, comment))
    return out
