"""Prompt and sampling settings: prompt, seed, steps, width × height, guidance."""

from __future__ import annotations

from typing import Any, Literal

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label

from dit_explore.engine.core.plan import Sampling
from dit_explore.engine.core.sampling import Settings

_NUMBERS: dict[str, Literal["integer", "number"]] = {
    "seed": "integer", "steps": "integer", "width": "integer", "height": "integer", "guidance": "number"}


class SamplingForm(Vertical):
    DEFAULT_CSS = """
    SamplingForm {
        height: auto;
        padding: 0 1;
        border-top: solid $panel;
    }
    SamplingForm Horizontal {
        height: auto;
    }
    SamplingForm Label {
        padding: 0 1 0 0;
    }
    SamplingForm Input {
        height: 1;
        border: none;
        padding: 0 1;
        margin: 0 1 0 0;
        background: $boost;
    }
    SamplingForm Input:focus {
        background: $primary 25%;
    }
    SamplingForm #prompt {
        width: 1fr;
    }
    SamplingForm .number {
        width: 10;
    }
    SamplingForm #guidance {
        width: 9;
    }
    """

    class Submitted(Message):
        """Enter in any field: run."""

    def __init__(self, prompt: str, settings: Settings, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._prompt = prompt
        self._settings = settings

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("prompt")
            yield Input(self._prompt, id="prompt", placeholder="what to draw")
        with Horizontal():
            for key in ("seed", "steps", "width", "height", "guidance"):
                yield Label({"width": "size", "height": "×"}.get(key, key))
                yield Input(str(getattr(self._settings, key)), id=key, type=_NUMBERS[key],
                            classes="number" if key != "guidance" else "")

    @property
    def prompt(self) -> str:
        return self.query_one("#prompt", Input).value.strip()

    def set_prompt(self, prompt: str) -> None:
        self.query_one("#prompt", Input).value = prompt

    def sampling(self) -> Sampling:
        """The numeric fields as sampling overrides: an empty field is None, so the model's default
        applies (resolved in one place: engine/core/sampling.py). Raises ValueError for non-numbers."""
        values: dict[str, Any] = {}
        for key, kind in _NUMBERS.items():
            text = self.query_one(f"#{key}", Input).value.strip()
            if text:
                values[key] = float(text) if kind == "number" else int(text)
        return Sampling(**values)

    def set_values(self, settings: Settings) -> None:
        """Show fully resolved settings (a plan's [sampling] over the model's defaults)."""
        for key in _NUMBERS:
            self.query_one(f"#{key}", Input).value = str(getattr(settings, key))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted())
