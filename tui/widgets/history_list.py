"""The session's runs: plan name, time, how far from the baseline; selecting one shows it again."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from dit_explore.engine.core.protocol import Status
from dit_explore.tui.session import RunRecord


def summary(record: RunRecord) -> Text:
    text = Text(f"{record.started}  ", style="dim")
    text.append(record.label)
    if record.difference is not None:
        text.append(f"  {record.difference.describe()}", style="dim")
    if record.status != Status.OK:
        text.append(f"  [{record.status}]", style="bold")
    return text


class HistoryList(OptionList):
    DEFAULT_CSS = """
    HistoryList {
        height: 8;
        border: none;
        border-top: solid $panel;
    }
    """

    class Chosen(Message):
        def __init__(self, record: RunRecord) -> None:
            super().__init__()
            self.record = record

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.records: list[RunRecord] = []

    def add(self, record: RunRecord) -> None:
        self.records.append(record)
        self.add_option(Option(summary(record), id=f"job-{record.job}"))
        self.highlighted = len(self.records) - 1

    def refresh_record(self, record: RunRecord) -> None:
        if record in self.records:
            self.replace_option_prompt_at_index(self.records.index(record), summary(record))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Chosen(self.records[event.option_index]))
