"""Small modal dialogs: ask for one value (a loop count, a plan name), or pick a plan file to open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

_DIALOG_CSS = """
{name} {{
    align: center middle;
}}
{name} > Vertical {{
    width: 72;
    height: auto;
    max-height: 80%;
    padding: 1 2;
    border: thick $primary;
    background: $surface;
}}
{name} Label.title {{
    text-style: bold;
    padding-bottom: 1;
}}
{name} Label.error {{
    color: $error;
    height: auto;
}}
"""


class AskDialog(ModalScreen[str | None]):
    """One line of input; `check` returns an error message (shown, dialog stays) or None (accepted)."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="AskDialog")
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, value: str = "", *, placeholder: str = "",
                 check: Callable[[str], str | None] = lambda _v: None) -> None:
        super().__init__()
        self._title = title
        self._value = value
        self._placeholder = placeholder
        self._check = check

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._title, classes="title")
            yield Input(self._value, placeholder=self._placeholder, id="answer")
            yield Label("", classes="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        problem = self._check(event.value.strip())
        if problem:
            self.query_one(".error", Label).update(problem)
            return
        self.dismiss(event.value.strip())


class OpenDialog(ModalScreen[str | None]):
    """Pick a plan file from the plan folders, or type any path (a .plan.toml or a dit-explore PNG)."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="OpenDialog") + """
    OpenDialog OptionList {
        height: auto;
        max-height: 16;
        margin-bottom: 1;
    }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, folders: list[Path]) -> None:
        super().__init__()
        self._files = sorted({p.resolve() for folder in folders if folder.is_dir()
                              for p in folder.rglob("*.plan.toml")})
        self._cwd = Path.cwd().resolve()

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self._cwd))
        except ValueError:
            return str(path)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a plan", classes="title")
            if self._files:
                yield OptionList(*[Option(self._shown(p), id=str(p)) for p in self._files], id="files")
            else:
                yield Label("no plan files in the plan folders yet", classes="error")
            yield Input(placeholder="or a path: plans/x.plan.toml, runs/.../000.png", id="path")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())
