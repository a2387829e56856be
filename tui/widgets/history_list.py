"""The session's runs: plan name, time, how far from the baseline; selecting one shows it again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from tui.metrics import difference


@dataclass
class RunRecord:
    """One run of the session, as the TUI keeps it (the engine wrote the same to `path`)."""

    job: int
    label: str
    started: str  # HH:MM:SS
    plan_text: str
    status: str = "running"
    path: Path | None = None
    image: Image.Image | None = None
    baseline: Image.Image | None = None
    timing: dict[str, Any] | None = None
    baseline_timing: dict[str, Any] | None = None
    block_runs: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Text:
        text = Text(f"{self.started}  ", style="dim")
        text.append(self.label)
        if self.image is not None and self.baseline is not None:
            text.append(f"  {difference(self.image, self.baseline).describe()}", style="dim")
        if self.status != "ok":
            text.append(f"  [{self.status}]", style="bold")
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
        self.add_option(Option(record.summary(), id=str(record.job)))
        self.highlighted = len(self.records) - 1

    def refresh_record(self, record: RunRecord) -> None:
        index = self.records.index(record)
        self.replace_option_prompt_at_index(index, record.summary())

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Chosen(self.records[event.option_index]))
