"""The layer grid: every block of every stack as a cell, colored by similarity group, with the cursor,
the selection, and what the plan does to each block.

After an importance sweep (engine/core/importance.py) the cells can show what leaving each block out
costs instead: the index shaded on the difference image's scale (inferno: black, leaving the block out
changes nothing; pale yellow, the costliest block of the sweep) and a bar of the cost in that shade, the
group letter kept on its group color; the legend says what is measured and the cursor's block's value
shows in the first row (and in a cell's tooltip). A key toggles back to the group colors.

Drawn line by line (`render_line`) from a small strip cache, so moving the cursor over 57 blocks costs
a few strips, not a re-layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.events import Click, MouseMove
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from dit_explore.engine.core.importance import Importance
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Cached, Group, Order, Plan, format_steps
from dit_explore.tui.editing import CellState, annotate
from dit_explore.tui.errors import funnel
from dit_explore.tui.keys import APP_KEYS, EDIT_KEYS, EDITS_BY_ID, GRID_KEYS, Edit, bindings
from dit_explore.tui.themes import STACK_COLORS
from dit_explore.tui.widgets.image_pane import colormap

CELL = 7  # "F12×3" plus padding: glyph, index, marker, gap
ORDER_LINES = 3  # lines of the execution-order strip per stack, at most
# The cell markers: one line of 78 characters, the grid's width at 80 columns (narrower, it wraps between
# entries: the order's markers, then the cached spans'). "∥K loops": a parallel group looped K times.
LEGEND_LINES = ("×N repeated  ∥ parallel  ∥K loops  ↺ reversed  – skipped", "↻ reused  ↗ forecast")
LEGEND = "  ".join(LEGEND_LINES)
EIGHTHS = " ▏▎▍▌▋▊▉█"
T = TypeVar("T")


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of `width` cells, filled to `fraction` (in eighths of a cell)."""
    eighths = round(min(1.0, max(0.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)[:width]


def readable_on(color: Color) -> Color:
    """Black or white, whichever reads on `color`."""
    r, g, b = color.get_truecolor()
    return Color.parse("#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#FFFFFF")


def stack_color(position: int) -> str:
    """The theme variable coloring a model's `position`-th stack (0-based) until groups are known: by
    position, never by name, so any family's stacks have colors."""
    return f"stack-{position % STACK_COLORS + 1}"


def group_style(ranges: list[tuple[int, int]] | None, position: int, stack: str, block: int) -> tuple[str, str]:
    """(glyph, theme variable) of a block of the `position`-th stack, named `stack`: its similarity group
    (F first, 1.. middle, L last), or its stack (initial and position color) until groups are known.
    Middle groups past the fourth share the fourth's color, not its digit."""
    if not ranges:
        return stack[:1].upper(), stack_color(position)
    for i, (a, b) in enumerate(ranges):
        if a <= block <= b:
            if i == 0:
                return "F", "group-first"
            if i == len(ranges) - 1:
                return "L", "group-last"
            return str(i), f"group-middle-{min(i, 4)}"
    return "?", stack_color(position)


@dataclass(frozen=True)
class Cursor:
    stack: int  # index into layout.stacks
    block: int


@dataclass(frozen=True)
class Span:
    """Blocks first..last (either way), each run once, in the execution-order strip."""

    first: int
    last: int


@dataclass(frozen=True)
class Row:
    kind: str  # "status", "steps" (a plan's step tables), "label", "cells", "blank", "legend", "order"
    stack: int = -1
    start: int = 0  # first block of a cells row


@funnel
class LayerGrid(Widget, can_focus=True):
    DEFAULT_CSS = """
    LayerGrid {
        height: auto;
        padding: 0 1;
    }
    LayerGrid:focus {
        background: $boost;
    }
    """
    # The run key is the grid's too, while it has focus: its request then queues behind the edits of the
    # keys typed before it ("s" then enter runs the skipped plan, however fast they come).
    BINDINGS = bindings(GRID_KEYS + EDIT_KEYS + tuple(replace(k, action="request_run") for k in APP_KEYS
                                                       if k.id == "run"))

    class RunRequested(Message):
        """The run key, pressed on the grid."""

    class EditRequested(Message):
        """A plan edit (a row of the edits registry) on a block range of one stack."""

        def __init__(self, edit: Edit, stack: str, first: int, last: int) -> None:
            super().__init__()
            self.edit = edit
            self.stack = stack
            self.first = first
            self.last = last

    def __init__(self, layout: Layout, plan: Plan, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.layout_info = layout
        self.plan = plan
        self.groups: dict[str, list[tuple[int, int]]] | None = None
        self.cursor = Cursor(0, 0)
        self.selection_anchor: Cursor | None = None  # where the selection began (None: no selection)
        self.visual = False
        self._rows: list[Row] = []
        self._rows_width = -1
        self._cells: dict[str, list[CellState]] = {}
        self._strips: dict[tuple[int, int], Strip] = {}
        self.shares: dict[str, list[float]] = {}  # each block's share of a full-model step (after a run)
        self.show_shares = False
        self.importance: Importance | None = None  # what leaving each block out costs (after a sweep)
        self.show_importance = False
        self._annotate()

    # ----------------------------------------------------------------------------- state changes

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._invalidate())

    def set_plan(self, plan: Plan) -> None:
        self.plan = plan
        self._annotate()
        self._rows_width = -1  # the execution-order strip may need other rows
        self.refresh(layout=True)
        self._invalidate()

    def set_block_times(self, blocks: dict[str, tuple[float, ...]]) -> None:
        """Seconds of each block in a full-model step (the engine's side-by-side timing)."""
        total = sum(sum(times) for times in blocks.values())
        if total <= 0:
            return
        self.shares = {name: [t / total for t in times] for name, times in blocks.items()}
        if self.show_shares:
            self._invalidate()

    def action_toggle_shares(self) -> None:
        """Show each block's share of a full-model step in its cell (in place of the plan's marker)."""
        if not self.shares:
            self.notify("block timing comes with the first run (enter)", severity="warning")
            return
        self.show_shares = not self.show_shares
        self._invalidate()

    def set_importance(self, importance: Importance | None) -> None:
        """A sweep's importance (None: none): the overlay shows it at once."""
        self.importance = importance
        self.show_importance = importance is not None
        self._rows_width = -1  # the legend changes
        self.refresh(layout=True)
        self._invalidate()

    def toggle_importance(self) -> bool:
        """Show or hide the importance overlay; False when there is none to show."""
        if self.importance is None:
            return False
        self.show_importance = not self.show_importance
        self._rows_width = -1
        self.refresh(layout=True)
        self._invalidate()
        return True

    @property
    def overlay(self) -> Importance | None:
        """The importance shown in the cells, or None (group colors)."""
        return self.importance if self.show_importance else None

    def cost_peak(self) -> float:
        """The largest cost of the overlay's sweep: the top of its color scale."""
        costs = [b.cost for blocks in (self.importance.stacks.values() if self.importance else ())
                 for b in blocks if b.cost is not None]
        return max(costs, default=0.0)

    def cost_fraction(self, cost: float) -> float:
        """Where a cost sits on the overlay's scale, 0..1 (the costliest block of the sweep at 1)."""
        peak = self.cost_peak()
        return min(1.0, cost / peak) if peak > 0 else 0.0

    def block_importance(self, stack: str, block: int) -> str | None:
        """What leaving this block out cost, in words (None: no overlay)."""
        shown = self.overlay
        if shown is None or stack not in shown.stacks:
            return None
        return f"{stack} {block} left out: {shown.block(stack, block).describe(shown.metric)}"

    def set_groups(self, groups: dict[str, list[tuple[int, int]]] | None) -> None:
        """Similarity groups per stack (contiguous, inclusive ranges); None colors by stack."""
        self.groups = groups
        self._rows_width = -1  # the legend may need more lines
        self.refresh(layout=True)
        self._invalidate()

    def set_layout(self, layout: Layout) -> None:
        if layout == self.layout_info:
            return
        self.layout_info = layout
        self.cursor, self.selection_anchor = Cursor(0, 0), None
        self._annotate()
        self._rows_width = -1
        self.refresh(layout=True)
        self._invalidate()

    def _annotate(self) -> None:
        self._cells = {s.name: annotate(self.plan, self.layout_info, s.name) for s in self.layout_info.stacks}

    def _invalidate(self) -> None:
        self._strips.clear()
        self.refresh()

    @property
    def stack_name(self) -> str:
        return self.layout_info.stacks[self.cursor.stack].name

    @property
    def selection(self) -> tuple[str, int, int]:
        """(stack, first, last) of the selection, or of the cursor block when nothing is selected."""
        c, a = self.cursor, self.selection_anchor
        if a is None or a.stack != c.stack:
            return self.stack_name, c.block, c.block
        return self.stack_name, min(a.block, c.block), max(a.block, c.block)

    def has_selection(self) -> bool:
        return self.selection_anchor is not None

    def clear_selection(self) -> None:
        self.selection_anchor, self.visual = None, False
        self._moved()

    def select(self, stack: str, first: int, last: int) -> None:
        i = self.layout_info.names.index(stack)
        self.selection_anchor, self.cursor = Cursor(i, first), Cursor(i, last)
        self._moved()

    # -------------------------------------------------------------------------------- geometry

    def _per_row(self, width: int) -> int:
        return max(1, (width - 1) // CELL)

    def _layout_rows(self, width: int) -> list[Row]:
        if width != self._rows_width:
            per_row = self._per_row(width)
            noted = self.plan.step_orders or self.plan.has_branches
            rows: list[Row] = [Row("status")] + ([Row("steps")] if noted else [])
            for i, stack in enumerate(self.layout_info.stacks):
                rows.append(Row("label", i))
                rows += [Row("cells", i, start) for start in range(0, stack.blocks, per_row)]
                rows.append(Row("blank"))
            rows += [Row("legend", i) for i in range(len(self._legend_lines(width)))]
            order = self._order_lines(width)
            if order:
                rows.append(Row("blank"))
                rows += [Row("order", i) for i in range(len(order))]
            self._rows, self._rows_width = rows, width
        return self._rows

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._layout_rows(width))

    def _cell_at(self, x: int, y: int) -> Cursor | None:
        rows = self._layout_rows(self.content_size.width)
        if not 0 <= y < len(rows) or rows[y].kind != "cells" or x < 0:
            return None
        row = rows[y]
        block = row.start + x // CELL
        if x % CELL == CELL - 1 or block >= self.layout_info.stacks[row.stack].blocks:
            return None
        if block >= row.start + self._per_row(self.content_size.width):
            return None
        return Cursor(row.stack, block)

    def _cursor_region(self) -> Region:
        per_row = self._per_row(self.content_size.width)
        rows = self._layout_rows(self.content_size.width)
        for y, row in enumerate(rows):
            if row.kind == "cells" and row.stack == self.cursor.stack and row.start <= self.cursor.block < row.start + per_row:
                return Region((self.cursor.block - row.start) * CELL, y, CELL, 1)
        return Region(0, 0, 1, 1)

    # --------------------------------------------------------------------------------- actions

    def action_move(self, dx: int, dy: int, extend: bool = False) -> None:
        self.selection_anchor = anchor_after(self.selection_anchor, self.cursor, extend or self.visual)
        stacks = self.layout_info.stacks
        s, b = self.cursor.stack, self.cursor.block
        per_row = self._per_row(self.content_size.width or 80)
        step = dx + dy * per_row
        target = b + step
        if 0 <= target < stacks[s].blocks:
            b = target
        elif extend:  # a selection stays inside one stack
            b = max(0, min(stacks[s].blocks - 1, target))
        elif dy == 0:  # left/right flow into the neighbouring stack
            if target < 0 and s > 0:
                s, b = s - 1, stacks[s - 1].blocks - 1
            elif target >= stacks[s].blocks and s < len(stacks) - 1:
                s, b = s + 1, 0
        else:  # up/down: same column in the neighbouring stack's nearest row
            column = b % per_row
            if target < 0 and s > 0:
                last_row_start = ((stacks[s - 1].blocks - 1) // per_row) * per_row
                s, b = s - 1, min(stacks[s - 1].blocks - 1, last_row_start + column)
            elif target >= stacks[s].blocks:
                if s < len(stacks) - 1:
                    s, b = s + 1, min(stacks[s + 1].blocks - 1, column)
                else:
                    b = stacks[s].blocks - 1
        self.cursor = Cursor(s, b)
        self._moved()

    def action_visual(self) -> None:
        self.visual = not self.visual
        self.selection_anchor = self.cursor if self.visual else None
        self._moved()

    def end_visual(self) -> None:
        """Leave visual mode (after an edit): moves no longer extend; the selection stays."""
        if self.visual:
            self.visual = False
            self._invalidate()

    def status_text(self) -> str:
        """The grid's state in words, for its first row: the cursor or the selection, and the mode."""
        stack, first, last = self.selection
        shares = "  · cells show each block's share of a full-model step (% hides)" if self.show_shares else ""
        cost = self.block_importance(self.stack_name, self.cursor.block)
        if cost is not None:
            shares = f"  · {cost.removeprefix(f'{self.stack_name} {self.cursor.block} ')}"
        if self.selection_anchor is None:
            return f"cursor {stack} {first}{shares}"
        where = f"{stack} {first}" if first == last else f"{stack} {first}-{last}"
        mode = "  VISUAL: moves extend, v ends" if self.visual else ""
        return f"selection {where} ({last - first + 1} block{'s' if last != first else ''}){mode}{shares}"

    def steps_note(self) -> str:
        """The line under the status of a plan with step tables or guidance branches: the grid shows and
        edits the default order, which is the conditional pass's where a plan has branches; the tables and
        the branches run as they are."""
        plan = self.plan
        tables = plan.step_orders
        steps = ", ".join(format_steps(t.steps) for t in tables)
        parts = ([f"{len(tables)} step table{'s' if len(tables) > 1 else ''} (steps {steps})"] if tables else [])
        for name, branch in plan.branches:
            scale = f" ×{branch.scale:g}" if branch.scale is not None else ""
            at = f" steps {format_steps(branch.steps)}" if branch.steps is not None else ""
            parts.append(f"[{name}]{scale}{at}")
        shown = "conditional pass shown" if plan.has_branches else "default order shown"
        return f"{shown} · {', '.join(parts)} run as written; edits change the default order"

    def action_select_group(self) -> None:
        """Select the similarity group under the cursor: "skip this middle group" is then one key away."""
        stack = self.stack_name
        for first, last in (self.groups or {}).get(stack, []):
            if first <= self.cursor.block <= last:
                self.select(stack, first, last)
                return
        self.notify("no similarity groups yet: they appear when the analysis lands (or press a)",
                    severity="warning")

    def action_request_run(self) -> None:
        self.post_message(self.RunRequested())

    def action_edit(self, edit_id: str) -> None:
        stack, first, last = self.selection
        self.post_message(self.EditRequested(EDITS_BY_ID[edit_id], stack, first, last))

    def _moved(self) -> None:
        self._invalidate()
        parent = self.parent
        if isinstance(parent, Widget) and parent.is_scrollable:  # keep the cursor in view
            offset = self.virtual_region.offset + (self.gutter.left, self.gutter.top)
            parent.scroll_to_region(self._cursor_region().translate(offset), animate=False)

    def on_mouse_move(self, event: MouseMove) -> None:
        """Over a cell, with the importance overlay on: its value as the tooltip."""
        cell = self._cell_at(event.x - self.gutter.left, event.y - self.gutter.top)
        words = None if cell is None else self.block_importance(self.layout_info.stacks[cell.stack].name, cell.block)
        if self.tooltip != words:
            self.tooltip = words

    def on_click(self, event: Click) -> None:
        cell = self._cell_at(event.x - self.gutter.left, event.y - self.gutter.top)
        if cell is None:
            return
        if event.shift and cell.stack == self.cursor.stack:
            self.selection_anchor = self.selection_anchor or self.cursor
        else:
            self.selection_anchor = None
        self.cursor = cell
        self.focus()
        self._moved()

    # ------------------------------------------------------------------------------- rendering

    def _var(self, name: str, fallback: str) -> Color:
        value = self.app.theme_variables.get(name, fallback)
        try:
            return Color.parse(value)
        except Exception:  # noqa: BLE001 - a bad theme value falls back, it never breaks drawing
            return Color.parse(fallback)

    def group_of(self, stack: str, block: int) -> tuple[str, str]:
        return group_style((self.groups or {}).get(stack), self.layout_info.names.index(stack), stack, block)

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        strip = self._strips.get((y, width))
        if strip is None:
            strip = self._render_row(y).crop_extend(0, width, self.rich_style)
            self._strips[(y, width)] = strip
        return strip

    def _render_row(self, y: int) -> Strip:
        rows = self._layout_rows(self.content_size.width)
        if y >= len(rows):
            return Strip.blank(self.content_size.width)
        row = rows[y]
        base = self.rich_style
        if row.kind == "blank":
            return Strip([])
        if row.kind == "status":
            style = base + (Style(reverse=True, bold=True) if self.visual else Style(dim=True))
            return Strip([Segment(self.status_text(), style)])
        if row.kind == "steps":
            return Strip([Segment(self.steps_note(), base + Style(italic=True))])
        if row.kind == "legend":
            return Strip(self._legend_lines(self.content_size.width)[row.stack])
        if row.kind == "order":
            return Strip(self._order_lines(self.content_size.width)[row.stack])
        stack = self.layout_info.stacks[row.stack]
        if row.kind == "label":
            order = self.plan.order(stack.name)
            note = "unchanged" if order is None else "edited"
            return Strip([Segment(f"{stack.name}", base + Style(bold=True)),
                          Segment(f"  {stack.blocks} blocks · {note}", base + Style(dim=True))])
        per_row = self._per_row(self.content_size.width)
        segments = []
        cells = self._cells[stack.name]
        _, first, last = self.selection
        for block in range(row.start, min(stack.blocks, row.start + per_row)):
            segments += self._cell(stack.name, row.stack, block, cells[block], first, last)
            segments.append(Segment(" ", base))
        return Strip(segments)

    def _cell(self, stack: str, stack_index: int, block: int, state: CellState, first: int,
              last: int) -> list[Segment]:
        """A block's cell: its group glyph on a darker shade of the group color (so "1 12" never reads as
        one number), then its index and the plan's marker (or its share of the step time)."""
        glyph, var = self.group_of(stack, block)
        color = self._var(var, "#56B4E9")
        text_color = self._var("cell-text", "#000000")
        is_cursor = self.cursor == Cursor(stack_index, block)
        in_selection = stack_index == self.cursor.stack and first <= block <= last and self.selection_anchor is not None
        if state.skipped:
            style = Style(color=color, bgcolor=self._var("cell-skipped", "#3A3F4B"), dim=True, strike=True)
        else:
            style = Style(color=text_color, bgcolor=color)
        if in_selection:
            selected = self._var("cell-selected", "#F0E442")
            light = sum(selected.get_truecolor()) > 382
            style = Style(color=Color.parse("#000000" if light else "#FFFFFF"), bgcolor=selected, bold=True)
        if is_cursor:
            style += Style(reverse=True, bold=True, underline=True)
        overlay = self.overlay
        if overlay is not None and stack in overlay.stacks:  # the cost in place of group color and marker
            return self._cost_cell(glyph, color, block, overlay.block(stack, block).cost, state, is_cursor,
                                   in_selection)
        if self.show_shares and self.shares.get(stack):  # the share in place of index and marker
            share = self.shares[stack][block] * 100
            rest = f"{share:.0f}%".rjust(CELL - 2) if share >= 0.5 else "<1%".rjust(CELL - 2)
        else:
            rest = f"{block:>2}{state.label():<3}"[: CELL - 2].ljust(CELL - 2)
        glyph_style = style
        if style.bgcolor is not None and not is_cursor:
            r, g, b = style.bgcolor.get_truecolor()
            glyph_style = style + Style(bgcolor=Color.from_rgb(r * 0.62, g * 0.62, b * 0.62), bold=True,
                                        color=Color.parse("#FFFFFF"))
        return [Segment(glyph, glyph_style), Segment(rest, style)]

    def cost_color(self, cost: float) -> Color:
        """The overlay's shade of a cost (the difference image's scale, the sweep's costliest block brightest)."""
        return Color.from_rgb(*colormap(self.cost_fraction(cost)))

    def _cost_cell(self, glyph: str, group: Color, block: int, cost: float | None, state: CellState,
                   is_cursor: bool, in_selection: bool) -> list[Segment]:
        """A block's cell under the importance overlay: its group letter on a darker shade of its group
        color, its index on the cost's shade, then a bar of the cost in that shade on the skipped color
        (so a long bright bar is a costly block on any terminal, colors or not); a block without a cost
        (its items failed) is marked ✗ on the skipped color. A skipped block is struck through; the
        selection and the cursor show as elsewhere."""
        track = self._var("cell-skipped", "#3A3F4B")
        if cost is None:
            index_style = bar_style = Style(color=readable_on(track), bgcolor=track)
            index, filled = f"{block:>2}", " ✗ "
        else:
            shade = self.cost_color(cost)
            index_style = Style(color=readable_on(shade), bgcolor=shade)
            bar_style = Style(color=shade, bgcolor=track)
            index, filled = f"{block:>2}", bar(self.cost_fraction(cost), CELL - 4)
        if state.skipped:
            index_style += Style(strike=True)
        r, g, b = group.get_truecolor()
        glyph_style = Style(color=Color.parse("#FFFFFF"), bgcolor=Color.from_rgb(r * 0.62, g * 0.62, b * 0.62),
                            bold=True)
        if in_selection:
            selected = self._var("cell-selected", "#F0E442")
            glyph_style = Style(color=readable_on(selected), bgcolor=selected, bold=True)
        if is_cursor:  # the bar keeps its shade: reversed, a full bar would read as an empty one
            cursor = Style(reverse=True, bold=True, underline=True)
            glyph_style, index_style = glyph_style + cursor, index_style + cursor
            bar_style += Style(underline=True)
        return [Segment(glyph, glyph_style), Segment(index, index_style), Segment(filled, bar_style)]

    def _order_lines(self, width: int) -> list[list[Segment]]:
        """The execution-order strip: for each stack the plan edits, the order its blocks actually run,
        as chips in their group colors (repeats as "12×3", groups as "[2 3]×3"), wrapped to `width`, at most
        ORDER_LINES lines a stack."""
        base = self.rich_style
        lines: list[list[Segment]] = []
        for stack in self.layout_info.stacks:
            order = self.plan.order(stack.name)
            if order is None:
                continue
            head = [Segment(f"{stack.name} runs ", base + Style(bold=True))]
            pieces = [self._order_piece(stack.name, unit, count)
                      for unit, count in self._spans(stack.name, _runs_of(order))] or \
                [[Segment("no block", base + Style(dim=True))]]
            stack_lines: list[list[Segment]] = [head]
            used = sum(len(s.text) for s in head)
            for piece in pieces:
                size = sum(len(s.text) for s in piece) + 1
                if used + size > width and used > len(head[0].text):
                    if len(stack_lines) == ORDER_LINES:
                        stack_lines[-1].append(Segment("…", base))
                        break
                    stack_lines.append([Segment(" " * len(head[0].text), base)])
                    used = len(head[0].text)
                stack_lines[-1] += [*piece, Segment(" ", base)]
                used += size
            lines += stack_lines
        return lines

    def _spans(self, stack: str, runs: list[tuple[int | Group | Cached, int]]) -> list[tuple[int | Group | Cached | Span, int]]:
        """Stretches of three or more blocks run once each, one after the next (up or down) and in one
        group, as one span: a 38-block stack reads as "0 1–9 10–28 29–37", not as 38 numbers."""
        out: list[tuple[int | Group | Cached | Span, int]] = []
        i = 0
        while i < len(runs):
            unit, count = runs[i]
            j = i
            if isinstance(unit, int) and count == 1:
                step = 0
                while j + 1 < len(runs):
                    nxt, nxt_count = runs[j + 1]
                    prev = runs[j][0]
                    assert isinstance(prev, int)
                    if not (isinstance(nxt, int) and nxt_count == 1 and abs(nxt - prev) == 1
                            and (step == 0 or nxt - prev == step)
                            and self.group_of(stack, nxt)[0] == self.group_of(stack, unit)[0]):
                        break
                    step = nxt - prev
                    j += 1
            if j - i >= 2:
                last = runs[j][0]
                assert isinstance(unit, int) and isinstance(last, int)
                out.append((Span(unit, last), 1))
                i = j + 1
            else:
                out.append((unit, count))
                i += 1
        return out

    def _order_piece(self, stack: str, unit: int | Group | Cached | Span, count: int) -> list[Segment]:
        def chip(block: int, text: str | None = None) -> Segment:
            _, var = self.group_of(stack, block)
            return Segment(text or f"{block}", Style(color=self._var("cell-text", "#000000"),
                                                     bgcolor=self._var(var, "#56B4E9")))

        base = self.rich_style
        times = f"×{count}" if count > 1 else ""
        if isinstance(unit, Span):
            return [chip(unit.first, f"{unit.first}–{unit.last}")]
        if isinstance(unit, int):
            return [chip(unit), Segment(times, base)]
        if isinstance(unit, Cached):  # computed on the first step, then reused (↻) or forecast (↗)
            span = f"{unit.first}" if unit.first == unit.last else f"{unit.first}–{unit.last}"
            return [chip(unit.first, span), Segment(("↻" if unit.mode == "reuse" else "↗") + unit.mode + times, base)]
        members: list[Segment] = [Segment("[", base)]
        for i, member in enumerate(unit.members):
            members += [Segment(" ", base)] if i else []
            members.append(chip(member))
        loops = unit.loops * count
        return [*members, Segment("]" + (f"×{loops}" if loops > 1 else ""), base)]

    def _legend_entries(self) -> list[tuple[str, str, str]]:
        """(glyph, theme variable, words) of each color in use."""
        if self.groups:
            longest = max(len(r) for r in self.groups.values())
            return ([("F", "group-first", "first")]
                    + [(str(i), f"group-middle-{min(i, 4)}", f"middle {i}") for i in range(1, longest - 1)]
                    + [("L", "group-last", "last")])
        return [(s.name[:1].upper(), stack_color(i), f"{s.name} (groups not analyzed yet)")
                for i, s in enumerate(self.layout_info.stacks)]

    def _importance_legend(self, width: int) -> list[list[Segment]]:
        """What the overlay shows (wrapped to `width`), its scale up to the costliest block, and its keys."""
        shown = self.overlay
        assert shown is not None
        base = self.rich_style
        lines = [[Segment(line, base)] for line in _words_to(shown.legend, max(20, width))]
        costed = [(stack, k, b) for stack, blocks in shown.stacks.items() for k, b in enumerate(blocks)
                  if b.cost is not None]
        scale = [Segment("cost 0 ", base)]
        scale += [Segment("█", base + Style(color=Color.from_rgb(*colormap(i / 11)))) for i in range(12)]
        if costed:
            stack, k, block = max(costed, key=lambda item: item[2].cost or 0.0)
            value = f", {shown.metric.text(block.value)}" if block.value is not None else ""
            scale.append(Segment(f" {block.cost:.2f} ({stack} {k}{value})", base))
        else:
            scale.append(Segment(" — no block has a cost", base))
        lines.append(scale)
        failed = "✗ failed: no cost  ·  " if len(costed) < sum(len(b) for b in shown.stacks.values()) else ""
        lines.append([Segment(f"{failed}I group colors  ·  P the sweep's plot and contact sheet", base + Style(dim=True))])
        return lines

    def _legend_lines(self, width: int) -> list[list[Segment]]:
        """The color legend wrapped to `width`, then the marker legend; under the importance overlay, what
        it shows and its scale."""
        if self.overlay is not None:
            return self._importance_legend(width)
        base = self.rich_style
        lines: list[list[Segment]] = [[]]
        used = 0
        for glyph, var, words in self._legend_entries():
            piece = [Segment(f" {glyph} ", Style(color=self._var("cell-text", "#000000"), bgcolor=self._var(var, "#56B4E9"))),
                     Segment(f" {words}   ", base)]
            size = sum(len(seg.text) for seg in piece)
            if used and used + size > width:
                lines.append([])
                used = 0
            lines[-1] += piece
            used += size
        lines += [[Segment(line, base + Style(dim=True))] for line in _entries_to(LEGEND_LINES, width)]
        return lines


def _entries_to(lines: tuple[str, ...], width: int) -> list[str]:
    """The marker legend in as few lines of at most `width` characters as its entries (separated by two
    spaces) allow: one line where all fit, else each of `lines` on its own, wrapped between entries."""
    if len("  ".join(lines)) <= width:
        return ["  ".join(lines)]
    out: list[str] = []
    for line in lines:
        row: list[str] = []
        for entry in line.split("  "):
            if row and len("  ".join([*row, entry])) > width:
                out.append("  ".join(row))
                row = []
            row.append(entry)
        out.append("  ".join(row))
    return out


def _words_to(text: str, width: int) -> list[str]:
    """`text` wrapped at spaces to lines of at most `width` characters (a longer word is cut)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word[:width])
    return lines


def anchor_after(anchor: T | None, cursor: T, extend: bool) -> T | None:
    """Where a selection is anchored after a move (the grid's and the step map's): a move that extends
    keeps the anchor, or drops one at the cursor before it moves; any other move ends the selection."""
    if not extend:
        return None
    return cursor if anchor is None else anchor


def _runs_of(order: Order) -> list[tuple[int | Group | Cached, int]]:
    """Back-to-back repeats of one unit, counted: (12, 12, 12, 5) -> [(12, 3), (5, 1)]."""
    runs: list[tuple[int | Group | Cached, int]] = []
    for unit in order:
        if runs and runs[-1][0] == unit:
            runs[-1] = (unit, runs[-1][1] + 1)
        else:
            runs.append((unit, 1))
    return runs
