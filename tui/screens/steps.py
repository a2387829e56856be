"""The plan over time: a step × block map (rows = denoising steps, one column a block, stacks side by side),
edited with the grid's keys on a range of steps.

Each cell says what the block does on that step (tui/steps.py): █ runs, · skipped, × repeated, ∥ in a
parallel group, ↺ reversed, ↻ reused and ↗ forecast (a cached span; computed on step 0). Arrows (or
hjkl) move, shift+arrows (or v, then moves) select a rectangle of steps × blocks of one stack, and an
edit key (s, m, r, p, x, d and the cache keys, rebound as in the grid) applies that edit to those blocks
on those steps only: the plan gets `[[steps]]` tables. `u` / `ctrl+r` undo and redo through the app's
history; T or escape closes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Plan, format_steps, span_text
from dit_explore.tui.keys import EDIT_KEYS, EDITS_BY_ID, GRID_KEYS, Edit, bindings
from dit_explore.tui.steps import step_map
from dit_explore.tui.widgets.layer_grid import anchor_after

GLYPHS = {"run": "█", "skip": "·", "repeat": "×", "parallel": "∥", "reverse": "↺", "reuse": "↻", "forecast": "↗"}
LEGEND = "█ runs  · skipped  × repeated  ∥ parallel  ↺ reversed  ↻ reused  ↗ forecast"
LABEL = 5  # columns of the step labels ("  19 ")
GAP = 2  # columns between two stacks


@dataclass(frozen=True)
class Cell:
    step: int
    column: int  # over all stacks, in layout order


class StepMap(Widget, can_focus=True):
    """The map itself: a header line (stack names), an index line, then one line per step."""

    DEFAULT_CSS = """
    StepMap {
        width: auto;
        height: auto;
    }
    StepMap:focus {
        background-tint: $foreground 3%;
    }
    """
    BINDINGS = bindings(tuple(k for k in GRID_KEYS if k.id not in ("grid.group", "grid.shares")) + EDIT_KEYS)
    TOP = 2

    class EditRequested(Message):
        """An edit of blocks first..last of one stack on the steps first_step..last_step."""

        def __init__(self, edit: Edit, stack: str, first: int, last: int, steps: range) -> None:
            super().__init__()
            self.edit, self.stack, self.first, self.last, self.steps = edit, stack, first, last, steps

    def __init__(self, layout: Layout, plan: Plan, steps: int) -> None:
        super().__init__()
        self.layout_info = layout
        self.steps = steps
        self.columns = [(s.name, b) for s in layout.stacks for b in range(s.blocks)]
        self.cursor = Cell(0, 0)
        self.selection_anchor: Cell | None = None
        self.visual = False
        self.set_plan(plan)

    def set_plan(self, plan: Plan) -> None:
        self.plan = plan
        self.rows = step_map(plan, self.layout_info, self.steps)
        self.refresh()

    # ------------------------------------------------------------------------------------ geometry

    def x_of(self, column: int) -> int:
        stack = self.layout_info.names.index(self.columns[column][0])
        return LABEL + column + GAP * stack

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return self.x_of(len(self.columns) - 1) + 1

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self.TOP + self.steps

    # ----------------------------------------------------------------------------------- selection

    @property
    def selection(self) -> tuple[str, int, int, range]:
        """(stack, first block, last block, steps): the rectangle, within the cursor's stack."""
        c, a = self.cursor, self.selection_anchor or self.cursor
        stack = self.columns[c.column][0]
        blocks = [self.columns[i][1] for i in range(min(a.column, c.column), max(a.column, c.column) + 1)
                  if self.columns[i][0] == stack] or [self.columns[c.column][1]]
        return stack, min(blocks), max(blocks), range(min(a.step, c.step), max(a.step, c.step) + 1)

    def action_move(self, dx: int, dy: int, extend: bool = False) -> None:
        self.selection_anchor = anchor_after(self.selection_anchor, self.cursor, extend or self.visual)
        self.cursor = Cell(min(max(self.cursor.step + dy, 0), self.steps - 1),
                           min(max(self.cursor.column + dx, 0), len(self.columns) - 1))
        self.refresh()
        self.scroll_to_region(Region(self.x_of(self.cursor.column), self.TOP + self.cursor.step, 1, 1), animate=False)
        self.post_message(self.Moved())

    class Moved(Message):
        """The cursor or the selection changed."""

    def action_visual(self) -> None:
        self.visual = not self.visual
        self.selection_anchor = self.cursor if self.visual else None
        self.refresh()
        self.post_message(self.Moved())

    def action_edit(self, edit_id: str) -> None:
        stack, first, last, steps = self.selection
        self.visual = False
        self.post_message(self.EditRequested(EDITS_BY_ID[edit_id], stack, first, last, steps))

    def describe(self) -> str:
        stack, first, last, steps = self.selection
        state = self.rows[self.cursor.step][self.columns[self.cursor.column][0]][self.columns[self.cursor.column][1]]
        where = f"{stack} {span_text(first, last)} on steps {span_text(steps.start, steps.stop - 1)}"
        return f"cursor: step {self.cursor.step}, {self.columns[self.cursor.column][0]} " \
               f"{self.columns[self.cursor.column][1]} ({state}) · selection: {where}"

    # ------------------------------------------------------------------------------------- drawing

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.get_content_width(Size(0, 0), Size(0, 0))
        if y == 0:
            segments = [Segment(" " * LABEL, base)]
            for stack in self.layout_info.stacks:
                title = stack.name[:stack.blocks + GAP - 1]
                segments.append(Segment(title.ljust(stack.blocks + GAP), base + Style(bold=True)))
            return Strip(segments).crop(0, width)
        if y == 1:  # an index every 5 blocks
            text = [" "] * width
            for column, (_, block) in enumerate(self.columns):
                if block % 5 == 0:
                    x = self.x_of(column)
                    for i, ch in enumerate(str(block)):
                        if x + i < width and text[x + i] == " ":
                            text[x + i] = ch
            return Strip([Segment("".join(text), base + Style(dim=True))])
        step = y - self.TOP
        if not 0 <= step < self.steps:
            return Strip.blank(width, base)
        chosen, first, last, steps = self.selection
        row = self.rows[step]
        segments = [Segment(f"{step:>{LABEL - 1}} ", base + Style(dim=True))]
        for i, (name, block) in enumerate(self.columns):
            if i and self.columns[i - 1][0] != name:
                segments.append(Segment(" " * GAP, base))
            state = row[name][block]
            style = base + Style(color=_color(self, state), dim=state == "skip")
            if name == chosen and first <= block <= last and step in steps and (self.selection_anchor is not None):
                style += Style(bgcolor=self._var("primary", "#3b7dd8"))
            if Cell(step, i) == self.cursor:
                style += Style(reverse=True)
            segments.append(Segment(GLYPHS[state], style))
        return Strip(segments).crop(0, width)

    def _var(self, name: str, fallback: str) -> str:
        value = self.app.theme_variables.get(name)
        return value or fallback


def _color(widget: StepMap, state: str) -> str:
    if state == "run":
        return widget._var("success", "#4EBF71")
    if state == "skip":
        return widget._var("foreground", "#888888")
    if state in ("reuse", "forecast"):
        return widget._var("accent", "#ffa62b")
    return widget._var("warning", "#ffa62b")


class StepsScreen(ModalScreen[None]):
    """The step × block map of the app's plan (see the module). `apply` hands a new plan to the app (its
    undo history); `current` reads the app's plan back (after an undo)."""

    DEFAULT_CSS = """
    StepsScreen {
        align: center middle;
    }
    StepsScreen > Vertical {
        width: 100%;
        height: 100%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    StepsScreen #steps-status {
        height: auto;
        color: $text-muted;
    }
    StepsScreen #steps-scroll {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("escape,T", "dismiss", "close"),
        Binding("u", "undo", "undo"),
        Binding("ctrl+r", "redo", "redo"),
    ]

    def __init__(self, layout: Layout, steps: int, current: Callable[[], Plan], apply: Callable[[Plan], None],
                 undo: Callable[[], None], redo: Callable[[], None]) -> None:
        super().__init__()
        self.layout_info = layout
        self.steps = steps
        self.current = current
        self.apply = apply
        self._undo, self._redo = undo, redo

    def compose(self) -> ComposeResult:
        box = Vertical(id="steps-box")
        box.border_title = f"the plan over time · {self.steps} steps × {self.layout_info.total_blocks} blocks"
        box.border_subtitle = "shift+arrows select · edit keys act on the selected steps · u undo · T closes"
        with box:
            yield Static(LEGEND, id="steps-legend")
            with ScrollableContainer(id="steps-scroll"):
                yield StepMap(self.layout_info, self.current(), self.steps)
            yield Static("", id="steps-status")

    def on_mount(self) -> None:
        self.query_one(StepMap).focus()
        self._status()

    def _status(self, note: str = "") -> None:
        plan = self.current()
        tables = ", ".join(format_steps(t.steps) for t in plan.step_orders)
        line = self.query_one(StepMap).describe()
        line += f"\n[[steps]] tables: {tables}" if tables else "\nno [[steps]] tables: every step runs the default order"
        self.query_one("#steps-status", Static).update(line + (f"\n{note}" if note else ""))

    def on_step_map_moved(self, message: StepMap.Moved) -> None:
        self._status()

    def on_step_map_edit_requested(self, message: StepMap.EditRequested) -> None:
        from dit_explore.tui.steps import edit_steps

        options = {"loops": 3} if message.edit.asks_loops else {}
        plan = self.current()
        try:
            changed = edit_steps(plan, self.layout_info, message.steps, self.steps, message.edit.apply, message.stack,
                                 message.first, message.last, **options)
        except ValueError as exc:
            self._status(str(exc).splitlines()[0])
            return
        where = (f"{message.edit.verb} {message.stack} {span_text(message.first, message.last)} on steps "
                 f"{span_text(message.steps.start, message.steps.stop - 1)}")
        if changed == plan:
            self._status(f"{where}: the plan already runs these blocks that way")
            return
        self.apply(changed)
        self._refresh(f"{where}" + (" (3 loops; the grid's x asks for a count)" if options else ""))

    def _refresh(self, note: str = "") -> None:
        self.query_one(StepMap).set_plan(self.current())
        self._status(note)

    def action_undo(self) -> None:
        self._undo()
        self._refresh("undone")

    def action_redo(self) -> None:
        self._redo()
        self._refresh("redone")
