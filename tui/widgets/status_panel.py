"""Engine state in words, the progress of the run in flight, and the last run's timing."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from dit_explore.engine.core.protocol import Speed
from dit_explore.engine.core.sampling import BlockRuns, Timing


def _ms(seconds: float) -> str:
    """Under 10 ms with a decimal (a toy's decode is a fraction of one: never "0 ms"), then whole ms, then s."""
    if round(seconds * 1000, 1) < 10:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def timing_text(plan: Timing | None, baseline: Timing | None, block_runs: BlockRuns | None,
                speed: Speed | None = None) -> Text:
    """The last run's timing, and its measured speedup next to the predicted one (block executions).

    The transformer time per step is the median over warm steps (the first step pays warm-up and is
    left out; one warm step is marked noisy). The measured speedup never compares a cold run with a warm
    one: it is the engine's side-by-side timing of plan and full model on the same inputs (`speed`),
    which arrives a moment after the images."""
    text = Text()
    if plan is None:
        text.append("no run yet — press enter to run the plan", style="dim")
        return text
    text.append("last run  ", style="bold")
    text.append(f"total {_ms(plan.total)}")
    warm = plan.warm_step
    if warm is not None:
        text.append(f" · transformer {_ms(warm)}/step")
        text.append(f" (median of {plan.warm_steps} warm steps)" if plan.warm_steps > 1 else
                    " (1 warm step: noisy)", style="dim")
    else:
        text.append(f" · transformer {_ms(plan.transformer_total)} (1 step, cold: noisy)")
    encode = "cached" if plan.text_encode_cached else _ms(plan.text_encode)
    text.append(f" · text encode {encode} · decode {_ms(plan.decode)}")
    predicted = block_runs.predicted_speedup if block_runs is not None else None
    if predicted is not None:
        text.append("\nspeedup   ", style="bold")
        if speed is not None:
            text.append(f"measured {speed.speedup:.2f}×")
            text.append(f" (side by side, {speed.calls} warm calls each)", style="dim")
        elif baseline is not None:
            text.append("measured … (timing side by side)", style="dim")
        else:
            text.append("measured — (no baseline)", style="dim")
        text.append(f" · predicted {predicted:.2f}×")
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

    def on_mount(self) -> None:
        self._state: tuple[str, str, float | None] = ("starting", "", None)
        self.set_interval(1.0, self._tick)

    def show_state(self, words: str, style: str = "", since: float | None = None) -> None:
        """The engine's state in words; with `since` (a time.monotonic() value), the seconds since then
        follow the words and keep counting, so a long stage never looks frozen."""
        self._state = (words, style, since)
        self._tick()

    def _tick(self) -> None:
        words, style, since = self._state
        text = Text("engine  ", style="bold")
        text.append(words, style=style)
        if since is not None:
            text.append(f" ({time.monotonic() - since:.0f} s)", style=style)
        self.query_one("#engine-state", Static).update(text)

    def show_progress(self, done: float, total: float | None) -> None:
        """Progress of the work in flight; `total == 0` hides the bar (nothing running)."""
        bar = self.query_one("#progress", ProgressBar)
        bar.display = total != 0
        bar.update(total=total, progress=done)

    def show_timing(self, plan: Timing | None, baseline: Timing | None, block_runs: BlockRuns | None,
                    speed: Speed | None = None) -> None:
        self.query_one("#timing", Static).update(timing_text(plan, baseline, block_runs, speed))
