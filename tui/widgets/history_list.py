"""The run history: one row per run (time, how it ended, plan, distance from the baseline, prompt): the
runs of earlier sessions read back from the runs folder, then this session's. Enter on a row posts
`Chosen` (the app shows its images and loads its plan and prompt); escape posts `Left` (back to the grid).

Rows never wrap: each is one line, cut with an ellipsis at the width; the list scrolls.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from dit_explore.engine.core.protocol import Status
from dit_explore.tui.session import RunRecord

# How each ending reads in the list, and its style. A run read back from disk that still says "running"
# was left by an engine that is gone: the session marks it crashed, and it reads "interrupted".
STATUS_WORDS: dict[Status, tuple[str, str]] = {
    Status.RUNNING: ("running…", "bold yellow"),
    Status.OK: ("ok", "green"),
    Status.CANCELLED: ("cancelled", "yellow"),
    Status.SUPERSEDED: ("superseded", "dim"),
    Status.ERROR: ("failed", "bold red"),
    Status.CRASHED: ("crashed", "bold red"),
}
INTERRUPTED = ("interrupted", "red")
_WORD_WIDTH = max(len(word) for word, _ in [*STATUS_WORDS.values(), INTERRUPTED])


def status_word(record: RunRecord) -> tuple[str, str]:
    """The word a record's status reads as in the history, and its style."""
    if record.past and record.status == Status.CRASHED:
        return INTERRUPTED
    return STATUS_WORDS[record.status]


def summary(record: RunRecord) -> Text:
    """One history row (never wrapped: the list cuts it at its width)."""
    word, style = status_word(record)
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{record.started}  ", style="dim")
    text.append(f"{word:<{_WORD_WIDTH}}", style=style)
    text.append(f"  {record.label}")
    if record.difference is not None:
        text.append(f"  {record.difference.describe()}", style="dim")
    if record.prompt:
        text.append(f"  “{record.prompt}”", style="dim italic")
    return text


class HistoryList(OptionList):
    DEFAULT_CSS = """
    HistoryList {
        height: 8;
        border: none;
        border-top: solid $panel;
        padding: 0 0 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    HistoryList:focus {
        border: none;
        border-top: solid $primary;
    }
    """
    BINDINGS = [Binding("escape", "leave", "back to the grid", show=False)]

    class Chosen(Message):
        """Enter (or a click) on a run."""

        def __init__(self, record: RunRecord) -> None:
            super().__init__()
            self.record = record

    class Left(Message):
        """Escape in the list: the user is done with it."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.records: list[RunRecord] = []

    def add(self, record: RunRecord) -> None:
        """A run of this session: listed last, and highlighted."""
        if self._index(record) is not None:
            return
        self.records.append(record)
        self.add_option(self._option(record))
        self.highlighted = len(self.records) - 1

    def add_past(self, records: list[RunRecord]) -> None:
        """Runs of earlier sessions (oldest first): listed before this session's."""
        new = [r for r in records if self._index(r) is None]
        if not new:
            return
        at = next((i for i, r in enumerate(self.records) if not r.past), len(self.records))
        highlighted = self.highlighted
        self.records[at:at] = new
        self.clear_options()
        self.add_options([self._option(r) for r in self.records])
        if highlighted is None:
            self.highlighted = len(self.records) - 1
        else:
            self.highlighted = highlighted + len(new) if highlighted >= at else highlighted

    def refresh_record(self, record: RunRecord) -> None:
        index = self._index(record)
        if index is not None:
            self.replace_option_prompt_at_index(index, summary(record))

    def _index(self, record: RunRecord) -> int | None:
        """Where `record` (this very object: records compare by identity here) is listed."""
        return next((i for i, r in enumerate(self.records) if r is record), None)

    @staticmethod
    def _option(record: RunRecord) -> Option:
        return Option(summary(record), id=f"job-{record.job}")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Chosen(self.records[event.option_index]))

    def action_leave(self) -> None:
        self.post_message(self.Left())
