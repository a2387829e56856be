"""The plan line: each stack's canonical order, the predicted cost, and what makes the plan invalid."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.sampling import executions_per_step


class PlanBar(Static):
    DEFAULT_CSS = """
    PlanBar {
        height: auto;
        padding: 0 1;
        border-top: solid $panel;
    }
    """

    def show(self, plan: plans.Plan, layout: Layout, problem: str | None) -> None:
        text = Text()
        name = plan.name or "unsaved plan"
        text.append(f"{name}", style="bold")
        if plan.active_steps is not None:
            text.append(f"   (active at steps {plans.format_steps(plan.active_steps)})", style="dim")
        text.append("\n")
        for stack in layout.stacks:
            order = plan.order(stack.name)
            shown = plans.format_order(order) if order is not None else f"0-{stack.last}"
            text.append(f"{stack.name:>7}  ", style="bold")
            text.append(shown if shown else '"" (no block runs)', style="dim" if order is None else "")
            text.append("\n")
        runs, full = executions_per_step(plan, layout)
        text.append("   cost  ", style="bold")
        text.append(f"{runs} / {full} block executions per step", style="")
        if runs:
            text.append(f"  (predicted speedup {full / runs:.2f}×)", style="dim")
        if problem:
            text.append(f"\n  ✗ {problem}", style="bold red")
        self.update(text)
