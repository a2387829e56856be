"""The plan line: the plan's name (with where it was saved, and "modified" once it was edited since), each
stack's canonical (default) order, the plan's step tables and guidance branches ([uncond], [extra]), the
predicted cost, and what makes the plan invalid."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.sampling import executions_per_step

SHOWN_TABLES = 3  # step tables listed, one line each; the rest are counted
NO_BLOCK = '"" (no block runs)'


def _blocks(plan: plans.Plan) -> tuple[object, ...]:
    """What "modified" compares: which blocks run, in which order, at which steps."""
    return plan.orders, plan.active_steps, plan.step_orders, plan.uncond, plan.extra


class PlanBar(Static):
    DEFAULT_CSS = """
    PlanBar {
        height: auto;
        padding: 0 1;
        border-top: solid $panel;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # By plan name: the blocks of the plan as saved under that name (or opened), and where it lives.
        self._saved: dict[str, tuple[tuple[object, ...], str | None]] = {}
        self._shown: tuple[plans.Plan, Layout, str | None] | None = None

    def mark_saved(self, plan: plans.Plan, where: str | None = None) -> None:
        """`plan` is what its name stands for now (just saved to, or opened from, `where`): later edits
        of it show as modified."""
        if plan.name:
            self._saved[plan.name] = (_blocks(plan), where)
        if self._shown is not None:
            self.show(*self._shown)

    def is_modified(self, plan: plans.Plan) -> bool:
        """A named plan whose blocks differ from what was saved (or opened) under its name."""
        saved = self._saved.get(plan.name) if plan.name else None
        return saved is not None and saved[0] != _blocks(plan)

    def show(self, plan: plans.Plan, layout: Layout, problem: str | None) -> None:
        if self._shown is None and plan.name and plan.name not in self._saved:
            self._saved[plan.name] = (_blocks(plan), None)  # the plan the explorer started with (--plan)
        self._shown = (plan, layout, problem)
        text = Text()
        name = plan.name or "unsaved plan"
        text.append(f"{name}", style="bold")
        saved = self._saved.get(plan.name) if plan.name else None
        if self.is_modified(plan):
            text.append("  ● modified", style="bold yellow")
        elif saved is not None and saved[1]:
            text.append(f"  {saved[1]}", style="dim")
        if plan.active_steps is not None:
            text.append(f"   (active at steps {plans.format_steps(plan.active_steps)})", style="dim")
        text.append("\n")
        for stack in layout.stacks:
            order = plan.order(stack.name)
            shown = plans.format_order(order) if order is not None else f"0-{stack.last}"
            text.append(f"{stack.name:>7}  ", style="bold")
            text.append(shown if shown else NO_BLOCK, style="dim" if order is None else "")
            text.append("\n")
        for table in plan.step_orders[:SHOWN_TABLES]:
            orders = "; ".join(f"{name}: {plans.format_order(order) or NO_BLOCK}" for name, order in table.orders)
            text.append(f"  steps  {plans.format_steps(table.steps)}  ", style="bold")
            text.append((orders or "full model") + "\n", style="")
        if len(plan.step_orders) > SHOWN_TABLES:
            text.append(f"         … and {len(plan.step_orders) - SHOWN_TABLES} more step tables\n", style="dim")
        for name, branch in plan.branches:
            orders = "; ".join(f"{stack}: {plans.format_order(order) or NO_BLOCK}" for stack, order in branch.orders)
            scale = f" ×{branch.scale:g}" if branch.scale is not None else ""
            text.append(f"{name:>7}{scale}  ", style="bold")
            if branch.steps is not None:
                text.append(f"steps {plans.format_steps(branch.steps)}  ", style="dim")
            text.append((orders or "full model") + "\n", style="")
        runs, full = executions_per_step(plan, layout)
        text.append("   cost  ", style="bold")
        which = " (the conditional pass)" if plan.has_branches else " (default order)" if plan.step_orders else ""
        text.append(f"{runs} / {full} block executions per step{which}", style="")
        if plan.has_branches:  # the passes of [uncond] and [extra] count in the run's block executions
            text.append("  (branch passes come on top)", style="dim")
        elif runs:
            text.append(f"  (predicted speedup {full / runs:.2f}×)", style="dim")
        if problem:
            text.append(f"\n  ✗ {problem}", style="bold red")
        self.update(text)
