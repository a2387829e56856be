"""Small modal dialogs: ask for one value (a loop count, a plan name), pick a plan file (or a sweep's
folder) to open, or answer a question (overwrite a plan file?)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.layout import Layout
from dit_explore.tui.session import slug

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


@dataclass(frozen=True)
class PlanFile:
    """A plan file as the open dialog lists it."""

    path: Path
    label: str  # relative to the plan folder it is in, without .plan.toml: "flux-schnell/2-skip-middle"
    name: str | None  # the plan's own name
    model: str | None  # the model it was written for (None: it does not say, or it cannot be read)
    problem: str | None  # why it cannot open on this model; None: it fits
    mine: bool  # written for this model (or for none) and fits it: listed first


def plan_files(folders: Iterable[Path], model: str, layout: Layout | None) -> list[PlanFile]:
    """The plan files under `folders` (each listed once, under the first folder that holds it): this
    model's first, then the others; in each group by folder (in the order given), then by label."""
    seen: set[Path] = set()
    found: list[tuple[int, PlanFile]] = []
    for rank, folder in enumerate(folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(f"*{plans.PLAN_SUFFIX}")):
            resolved = path.resolve()
            if resolved in seen or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            seen.add(resolved)
            label = path.relative_to(folder).as_posix().removesuffix(plans.PLAN_SUFFIX)
            name = written_for = problem = None
            try:
                plan = plans.load(path)
                name, written_for = plan.name, plan.model
                if layout is not None:
                    plans.validate(plan, layout, source=label)
            except plans.PlanError as exc:
                problem = exc.problems[0].removeprefix(f"{label}: ").removeprefix(f"{path}: ")
            mine = problem is None and written_for in (None, model)
            found.append((rank, PlanFile(resolved, label, name, written_for, problem, mine)))
    return [file for _rank, file in sorted(found, key=lambda item: (not item[1].mine, item[0], item[1].label))]


def how_it_differs(path: Path, plan: plans.Plan) -> str | None:
    """What the plan file at `path` holds that `plan` does not ("other blocks", ...); None when there is
    no such file or it holds exactly `plan` (saving again changes nothing)."""
    if not path.exists():
        return None
    try:
        held = plans.load(path)
    except plans.PlanError:
        return "a file that does not read as a plan"
    what = [words for differs, words in (
        ((held.orders, held.active_steps, held.step_orders) != (plan.orders, plan.active_steps, plan.step_orders),
         "other blocks"),
        (held.name != plan.name, f"the name {held.name!r}" if held.name else "no name"),
        (held.model != plan.model, f"the model {held.model}" if held.model else "no model"),
        (held.sampling != plan.sampling, "another prompt or sampling"),
        (held.note != plan.note, "another note"),
    ) if differs]
    return ", ".join(what) if what else None


def free_name(folder: Path, name: str, plan: plans.Plan) -> str:
    """`name (2)`, `name (3)`, ...: the first whose file in `folder` is free (or holds this very plan)."""
    for number in itertools.count(2):
        base = name
        while base and not slug(f"{base} ({number})").endswith(f"-{number}"):  # file names are cut at 60
            base = base[:-1].rstrip()
        candidate = f"{base} ({number})"
        if how_it_differs(folder / f"{slug(candidate)}{plans.PLAN_SUFFIX}", replace(plan, name=candidate)) is None:
            return candidate
    raise AssertionError("unreachable")


SWEEPS_LISTED = 10  # the explorer's newest sweeps in the open dialog


def sweep_folders(folder: Path | None, model: str, limit: int = SWEEPS_LISTED) -> list[Path]:
    """The newest finished sweeps of `model` (folders holding results.json, whose sweep.json names the
    model) directly under `folder`, newest first (their names begin with the time they started)."""
    if folder is None or not folder.is_dir():
        return []
    try:
        found = sorted((p for p in folder.iterdir() if p.is_dir() and (p / "results.json").is_file()),
                       key=lambda p: p.name, reverse=True)
    except OSError:
        return []
    mine = []
    for path in found:
        try:
            record = json.loads((path / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("model") == model:
            mine.append(path)
            if len(mine) == limit:
                break
    return mine


class OpenDialog(ModalScreen[str | None]):
    """Pick a plan file from the plan folders, or one of the explorer's sweeps (`sweeps`: the folder
    they are in), or type any path (a .plan.toml, a dit-explore PNG, or a sweep's folder: its importance
    on the grid). The model's own plans come first; plans for other models follow, dimmed and marked with
    their model, and one that does not fit this model is refused here, with the reason."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="OpenDialog") + """
    OpenDialog > Vertical {
        width: 88;
        max-width: 95%;
    }
    OpenDialog OptionList {
        height: auto;
        max-height: 18;
        margin-bottom: 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, folders: list[Path], model: str = "", layout: Layout | None = None, *,
                 sweeps: Path | None = None) -> None:
        super().__init__()
        self._model = model
        self._entries = plan_files(folders, model, layout)
        self._files = [entry.path for entry in self._entries]  # in the order listed
        self._sweeps = sweep_folders(sweeps, model)

    def _options(self) -> list[Option]:
        model = self._model or "this model"

        def heading(text: str) -> Option:
            return Option(Text(text, style="bold"), disabled=True)

        def row(index: int, entry: PlanFile) -> Option:
            text = Text(entry.label, style="" if entry.mine else "dim")
            if not entry.mine:
                text.append(f"  [{entry.model or 'no model'}]")
                if entry.problem is not None:
                    text.append("  ✗ does not fit")
            if entry.name and entry.name != entry.label.rsplit("/", 1)[-1]:
                text.append(f"  {entry.name}", style="dim italic")
            return Option(text, id=str(index))

        # The entries come this model's first (plan_files), so a row's id is its index in both lists.
        options = [heading(f"plans for {model}" if any(e.mine for e in self._entries) else
                           f"no plans for {model} yet")]
        options += [row(i, e) for i, e in enumerate(self._entries) if e.mine]
        if self._sweeps:
            options.append(heading(f"sweeps of {model} (the importance of each block, on the grid)"))
            options += [Option(Text(path.name), id=f"sweep-{i}") for i, path in enumerate(self._sweeps)]
        if not all(e.mine for e in self._entries):
            options.append(heading(f"other models (dimmed; those that do not fit {model} cannot open)"))
            options += [row(i, e) for i, e in enumerate(self._entries) if not e.mine]
        return options

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a plan", classes="title")
            if self._entries or self._sweeps:
                yield OptionList(*self._options(), id="files")
            else:
                yield Label("no plan files in the plan folders yet", classes="error")
            yield Input(placeholder="or a path: plans/x.plan.toml, runs/.../000.png, a sweep's folder", id="path")
            yield Label("", classes="error", id="refused")

    def on_mount(self) -> None:
        if self._entries or self._sweeps:
            files = self.query_one("#files", OptionList)
            files.highlighted = next((i for i, o in enumerate(files.options) if not o.disabled), None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is None:
            return
        if event.option.id.startswith("sweep-"):
            self.dismiss(str(self._sweeps[int(event.option.id.removeprefix("sweep-"))]))
            return
        entry = self._entries[int(event.option.id)]
        if entry.problem is not None:
            whose = f"a plan for {entry.model}" if entry.model and entry.model != self._model else "this plan"
            self.query_one("#refused", Label).update(
                f"{entry.label}: {whose} does not fit {self._model or 'this model'}: {entry.problem}")
            return
        self.dismiss(str(entry.path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())


class ConfirmDialog(ModalScreen[str | None]):
    """A question with a few answers (id, label); dismissed with the chosen id, or None on escape."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="ConfirmDialog") + """
    ConfirmDialog > Vertical {
        width: 80;
        max-width: 95%;
    }
    ConfirmDialog Label.message {
        height: auto;
        padding-bottom: 1;
    }
    ConfirmDialog OptionList {
        height: auto;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, message: str, answers: list[tuple[str, str]]) -> None:
        super().__init__()
        self._title = title
        self._message = message
        self._answers = answers

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._title, classes="title")
            yield Label(self._message, classes="message")
            yield OptionList(*[Option(label, id=answer) for answer, label in self._answers], id="answers")

    def on_mount(self) -> None:
        self.query_one("#answers", OptionList).highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)
