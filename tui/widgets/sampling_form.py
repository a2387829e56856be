"""Prompt and sampling settings: prompt, seed, steps, width × height, guidance; for a model with a closed
vocabulary (the toys), the words it knows while the prompt is edited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from dit_explore.engine.core.plan import Sampling
from dit_explore.engine.core.sampling import Settings
from dit_explore.tui.errors import funnel

_NUMBERS: dict[str, Literal["integer", "number"]] = {
    "seed": "integer", "steps": "integer", "width": "integer", "height": "integer", "guidance": "number"}


@funnel
class SamplingForm(Vertical):
    """The prompt and the sampling fields. Every field is checked as you type (`check`: the model's rules,
    engine/core/sampling.py `field_problems`); a field that cannot run is marked and the reason shows
    under the fields. An empty number field means the model's default."""

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
        padding: 0 1;
        margin: 0 1 0 0;
        background: $boost;
    }
    SamplingForm Input:focus {
        background: $primary 25%;
    }
    SamplingForm Input.-problem {
        background: $error 35%;
    }
    SamplingForm #prompt {
        width: 1fr;
    }
    SamplingForm .number {
        width: 9;
    }
    SamplingForm #guidance {
        width: 8;
    }
    SamplingForm #problems {
        height: auto;
        color: $error;
        display: none;
    }
    SamplingForm #problems.-shown {
        display: block;
    }
    SamplingForm #vocabulary {
        height: auto;
        color: $text-muted;
        display: none;
    }
    SamplingForm #vocabulary.-shown {
        display: block;
    }
    SamplingForm #vocabulary.-unseen {
        color: $warning;
    }
    """

    class Submitted(Message):
        """Enter in any field: run."""

    def __init__(self, prompt: str, settings: Settings, check: Callable[[Sampling], dict[str, str]], *,
                 known: str | None = None, unseen: Callable[[str], str | None] | None = None,
                 id: str | None = None) -> None:
        """`known`: the model's whole vocabulary as one line (None: open); `unseen`: the line naming the words
        of a prompt the model never saw (None when it saw them all). While the prompt is edited, the form
        shows the second if there is one, else the first."""
        super().__init__(id=id)
        self._prompt = prompt
        self._settings = settings
        self._check = check
        self._known = known
        self._unseen = unseen

    def compose(self) -> ComposeResult:
        # Compact inputs: one line, no border, so the text and the cursor are always visible, focused,
        # invalid or not. Focusing keeps the text (no select-all): typing edits, it does not replace.
        with Horizontal():
            yield Label("prompt")
            yield Input(self._prompt, id="prompt", placeholder="what to draw", compact=True, select_on_focus=False)
        with Horizontal():
            for key in _NUMBERS:
                yield Label({"width": "size", "height": "×"}.get(key, key))
                yield Input(str(getattr(self._settings, key)), id=key, type=_NUMBERS[key], compact=True,
                            select_on_focus=False, valid_empty=True,
                            classes="number" if key != "guidance" else "")
        yield Static("", id="problems")
        yield Static("", id="vocabulary")

    def on_mount(self) -> None:
        self._mark(self.problems())

    @property
    def prompt(self) -> str:
        return self.query_one("#prompt", Input).value.strip()

    def set_prompt(self, prompt: str) -> None:
        self.query_one("#prompt", Input).value = prompt

    def edit_prompt(self) -> None:
        """Focus the prompt with the cursor at its end."""
        field = self.query_one("#prompt", Input)
        field.focus()
        field.cursor_position = len(field.value)

    def _parsed(self) -> tuple[Sampling, dict[str, str]]:
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for key, kind in _NUMBERS.items():
            text = self.query_one(f"#{key}", Input).value.strip()
            if not text:
                continue
            try:
                values[key] = float(text) if kind == "number" else int(text)
            except ValueError:
                problems[key] = f"{text!r} is not {'a number' if kind == 'number' else 'a whole number'}"
        return Sampling(**values), problems

    def problems(self) -> dict[str, str]:
        """Field -> why it cannot run, for every field that cannot."""
        sampling, problems = self._parsed()
        return {**self._check(sampling), **problems}

    def sampling(self) -> Sampling:
        """The number fields as sampling overrides: an empty field is None, so the model's default applies
        (resolved in one place: engine/core/sampling.py). ValueError (one line) if a field cannot run."""
        sampling, _ = self._parsed()
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(f"{key}: {why}" for key, why in problems.items()))
        return sampling

    def set_values(self, settings: Settings) -> None:
        """Show fully resolved settings (a plan's [sampling] over the model's defaults)."""
        for key in _NUMBERS:
            self.query_one(f"#{key}", Input).value = str(getattr(settings, key))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._mark(self.problems())
        self._show_vocabulary()

    def on_descendant_focus(self) -> None:
        self._show_vocabulary()

    def on_descendant_blur(self) -> None:
        self._show_vocabulary()

    def _show_vocabulary(self) -> None:
        field = self.query_one("#prompt", Input)
        shown = self.query_one("#vocabulary", Static)
        unseen = self._unseen(field.value) if self._unseen is not None else None
        line = unseen or (f"knows {self._known}" if self._known else None)
        editing = field.has_focus and line is not None
        shown.update(Text(line or ""))
        shown.set_class(editing, "-shown")
        shown.set_class(unseen is not None, "-unseen")

    def _mark(self, problems: dict[str, str]) -> None:
        for key in _NUMBERS:
            self.query_one(f"#{key}", Input).set_class(key in problems, "-problem")
        text = Text()
        for i, (key, why) in enumerate(problems.items()):
            text.append(("\n" if i else "") + f"{key}: ", style="bold")
            text.append(why)
        shown = self.query_one("#problems", Static)
        shown.update(text)
        shown.set_class(bool(problems), "-shown")  # no empty line when every field can run

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted())
