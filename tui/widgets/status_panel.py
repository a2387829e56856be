"""Engine state in words, the progress of the run in flight, and the last run's timing."""

from __future__ import annotations

import statistics

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from dit_explore.engine.core.sampling import BlockRuns, Timing


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def timing_text(plan: Timing | None, baseline: Timing | None, block_runs: BlockRuns | None) -> Text:
    """The last run's timing; the measured speedup (baseline transformer time / plan transformer time)
    next to the predicted one (block executions)."""
    text = Text()
    if plan is None:
        text.append("no run yet — press enter to run the plan", style="dim")
        return text
    steps = plan.transformer_steps or (0.0,)
    text.append("last run  ", style="bold")
    text.append(f"total {_ms(plan.total)} · transformer {_ms(statistics.median(steps))}/step")
    encode = "cached" if plan.text_encode_cached else _ms(plan.text_encode)
    text.append(f" · text encode {encode} · decode {_ms(plan.decode)}")
    predicted = block_runs.predicted_speedup if block_runs is not None else None
    if predicted is not None:
        text.append("\nspeedup   ", style="bold")
        if baseline is not None and plan.transformer_total:
            text.append(f"measured {baseline.transformer_total / plan.transformer_total:.2f}× · ")
        else:
            text.append("measured — (no baseline) · ")
        text.append(f"predicted {predicted:.2f}×")
    return text


class StatusPanel(Vertical):
    DEFAULT_CSS = """
    StatusPanel {
        height: auto;
        padding: 0 1;
        border-top: solid $panel;
    }
    StatusPanel #engine-state {
        height: 1;
    }
    StatusPanel ProgressBar {
        height: 1;
    }
    StatusPanel #timing {
        height: auto;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static("engine: starting", id="engine-state")
        yield ProgressBar(total=None, show_eta=False, id="progress")  # indeterminate while starting
        yield Static(timing_text(None, None, None), id="timing")

    def show_state(self, words: str, style: str = "") -> None:
        text = Text("engine  ", style="bold")
        text.append(words, style=style)
        self.query_one("#engine-state", Static).update(text)

    def show_progress(self, done: float, total: float | None) -> None:
        """Progress of the work in flight; `total == 0` hides the bar (nothing running)."""
        bar = self.query_one("#progress", ProgressBar)
        bar.display = total != 0
        bar.update(total=total, progress=done)

    def show_timing(self, plan: Timing | None, baseline: Timing | None, block_runs: BlockRuns | None) -> None:
        self.query_one("#timing", Static).update(timing_text(plan, baseline, block_runs))
