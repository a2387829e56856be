"""The similarity matrices in the terminal: one heatmap per stack, drawn with half-block characters and
scaled to the space the screen has, with block indices and the similarity groups on rulers alongside;
`w` writes the same result as similarity.png into the runs folder.

Scale: a terminal cell is about twice as tall as wide and a half-block character holds two pixels one
above the other, so a pixel is about square. Every block is k columns wide and k half-rows tall (square),
with one k for all stacks (so they compare), the largest that fits the screen (at least 1; below that
the matrices scroll).
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.geometry import Size
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from dit_explore.engine.core.heatmap import color_scale, colormap, save_heatmaps
from dit_explore.engine.core.plan import span_text
from dit_explore.engine.core.similarity import SimilarityResult
from dit_explore.tui.session import slug
from dit_explore.tui.widgets.layer_grid import group_style

# Index labels go on every STEP-th block: the smallest step that keeps a space between labels.
LABEL_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
PANEL_GAP = 3  # columns between two stacks' matrices
MAX_SCALE = 64


def pixel_grid(matrix: list[list[float]], scale: tuple[float, float]) -> list[list[tuple[int, int, int]]]:
    """One RGB per matrix cell (the same colormap as similarity.png)."""
    lo, hi = scale
    return [[colormap(min(1.0, max(0.0, (v - lo) / (hi - lo) if hi > lo else 1.0))) for v in row] for row in matrix]


def label_step(blocks: int, k: int) -> int:
    """Label every `step`-th block (0, step, 2*step, ...): the smallest of 1, 2, 5, 10, 20, ... whose labels
    keep a space between them along the top (the widest is the last index) and fall on different text
    lines along the left (k half-rows a block, two half-rows a line)."""
    width = len(str(max(blocks - 1, 0)))
    return next((s for s in LABEL_STEPS if s * k >= max(width + 1, 2)), LABEL_STEPS[-1])


def filename(result: SimilarityResult, when: float | None = None) -> str:
    """similarity-<model>-<time>.png, the model's name made safe for a file name."""
    return f"similarity-{slug(result.model)}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}.png"


class MatrixView(Widget):
    """One stack's matrix at `k` columns and `k` half-rows a block. Lines: the title, the block indices,
    the top ruler (each block's group color and letter, as in the grid), then the matrix, with the
    indices and the left ruler (one half-block column, so each half-row has its block's group color)
    on its left."""

    DEFAULT_CSS = f"""
    MatrixView {{
        width: auto;
        height: auto;
        margin: 0 {PANEL_GAP} 0 0;
    }}
    """
    TOP = 3  # title, indices, ruler

    def __init__(self, position: int, stack: str, matrix: list[list[float]], groups: list[tuple[int, int]],
                 scale: tuple[float, float]) -> None:
        super().__init__()
        self.position = position
        self.stack = stack
        self.groups = groups
        self.pixels = pixel_grid(matrix, scale)
        self.blocks = len(self.pixels)
        self.title = f"{stack} · {self.blocks} block" + ("" if self.blocks == 1 else "s")
        self.k = 1

    @property
    def left(self) -> int:
        """Columns left of the matrix: the row indices, the ruler and a gap."""
        return len(str(max(self.blocks - 1, 0))) + 2

    def width_at(self, k: int) -> int:
        return max(len(self.title), self.left + self.blocks * k)

    def height_at(self, k: int) -> int:
        return self.TOP + math.ceil(self.blocks * k / 2)

    def set_scale(self, k: int) -> None:
        if k != self.k:
            self.k = k
            self.refresh(layout=True)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return self.width_at(self.k)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self.height_at(self.k)

    def _group(self, block: int) -> tuple[str, Color]:
        glyph, var = group_style(self.groups, self.position, self.stack, block)
        try:
            return glyph, Color.parse(self.app.theme_variables.get(var, "#888888"))
        except Exception:  # noqa: BLE001 - a bad theme value falls back, it never breaks drawing
            return glyph, Color.parse("#888888")

    def _labels(self, base: Style) -> list[Segment]:
        """The block indices over the matrix, each at its block's first column."""
        k, step = self.k, label_step(self.blocks, self.k)
        line = [" "] * (self.left + self.blocks * k)
        for block in range(0, self.blocks, step):
            label, x = str(block), self.left + block * k
            if x + len(label) <= len(line):
                line[x : x + len(label)] = label
        return [Segment("".join(line), base + Style(dim=True))]

    def _ruler(self, base: Style) -> list[Segment]:
        segments = [Segment(" " * self.left, base)]
        for block in range(self.blocks):
            glyph, color = self._group(block)
            segments.append(Segment(glyph.ljust(self.k)[: self.k], Style(color=Color.parse("#000000"), bgcolor=color)))
        return segments

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width or self.width_at(self.k)
        if y == 0:
            return Strip([Segment(self.title, base + Style(bold=True))]).adjust_cell_length(width, base)
        if y == 1:
            return Strip(self._labels(base)).adjust_cell_length(width, base)
        if y == 2:
            return Strip(self._ruler(base)).adjust_cell_length(width, base)
        k, n = self.k, self.blocks
        top_half = 2 * (y - self.TOP)
        r_top, r_bottom = top_half // k, (top_half + 1) // k
        if r_top >= n:
            return Strip.blank(width, base)
        has_bottom = r_bottom < n
        step = label_step(n, k)
        # The index of a block whose first half-row is on this line, right-aligned left of the ruler.
        label = next((str(r) for r in range(r_top, min(r_bottom, n - 1) + 1) if r % step == 0 and r * k // 2 == y - self.TOP),
                     "")
        segments = [Segment(label.rjust(self.left - 2), base + Style(dim=True))]
        bottom_group = self._group(r_bottom)[1] if has_bottom else base.bgcolor
        segments.append(Segment("▀", Style(color=self._group(r_top)[1], bgcolor=bottom_group)))
        segments.append(Segment(" ", base))
        top, bottom = self.pixels[r_top], self.pixels[r_bottom] if has_bottom else None
        cells = "▀" * k
        for j in range(n):
            fg = Color.from_rgb(*top[j])
            bg = Color.from_rgb(*bottom[j]) if bottom is not None else base.bgcolor
            segments.append(Segment(cells, Style(color=fg, bgcolor=bg)))
        return Strip(segments).adjust_cell_length(width, base)


class MatrixArea(ScrollableContainer):
    """The matrices side by side, scaled to this area's size whenever it changes."""

    DEFAULT_CSS = """
    MatrixArea {
        layout: horizontal;
        height: 1fr;
        overflow: auto auto;
    }
    """

    def on_resize(self, event: events.Resize) -> None:
        self.fit()

    def fit(self) -> None:
        views = list(self.query(MatrixView))
        if not views:
            return
        width, height = self.size.width, self.size.height

        def fits(k: int) -> bool:
            return (sum(v.width_at(k) + PANEL_GAP for v in views) - PANEL_GAP <= width
                    and max(v.height_at(k) for v in views) <= height)

        k = 1
        while k < MAX_SCALE and fits(k + 1):
            k += 1
        for view in views:
            view.set_scale(k)


class HeatmapScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HeatmapScreen {
        align: center middle;
    }
    HeatmapScreen > Vertical {
        width: 100%;
        height: 100%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    HeatmapScreen > Vertical > #heatmap-header {
        margin: 0 0 1 0;
    }
    """
    BINDINGS = [
        Binding("escape,t,q", "dismiss", "close"),
        Binding("w", "write_png", "write similarity.png"),
    ]

    def __init__(self, result: SimilarityResult, runs_dir: Path | None = None) -> None:
        """`runs_dir`: where `w` writes the PNG (the app's runs folder); without it, `w` says so."""
        super().__init__()
        self.result = result
        self.runs_dir = runs_dir

    def compose(self) -> ComposeResult:
        r = self.result
        scale = color_scale(r)
        box = Vertical(id="heatmaps")
        box.border_title = f"block similarity · {r.model} · {len(r.prompts)} prompts × {r.steps} steps · seed {r.seed}"
        # the folder's name only (the notice after writing gives the whole path)
        where = f"{self.runs_dir.name or self.runs_dir}/" if self.runs_dir is not None else "the runs folder"
        box.border_subtitle = f"w writes similarity-….png to {where} · t or escape closes"
        with box:
            yield Static(self._header(), id="heatmap-header")
            with MatrixArea(id="heatmap-matrices"):
                for position, (name, stack) in enumerate(r.stacks.items()):
                    yield MatrixView(position, name, stack.matrix, stack.groups, scale)

    def _header(self) -> Text:
        """The color scale, then each stack's groups: the rulers' letters on their colors, and the blocks."""
        r = self.result
        lo, hi = color_scale(r)
        text = Text("cosine ")
        for k in range(9):
            value = lo + (hi - lo) * k / 8
            text.append("  ", style=Style(bgcolor=Color.from_rgb(*colormap(k / 8))))
            if k in (0, 4, 8):
                text.append(f" {value:.2f} ")
        text.append("   rulers: each block's group, as in the grid", style="dim")
        for position, (name, stack) in enumerate(r.stacks.items()):
            text.append(f"\n{name}:")
            for first, last in stack.groups:
                glyph, var = group_style(stack.groups, position, name, first)
                try:
                    color = Color.parse(self.app.theme_variables.get(var, "#888888"))
                except Exception:  # noqa: BLE001 - a bad theme value falls back
                    color = Color.parse("#888888")
                text.append("  ")
                text.append(f" {glyph} ", style=Style(color=Color.parse("#000000"), bgcolor=color))
                text.append(f" {span_text(first, last)}")
        return text

    async def action_write_png(self) -> None:
        """Write this result's heatmaps (what `dit-explore analyze` writes as similarity.png) into the runs
        folder as similarity-<model>-<time>.png."""
        if self.runs_dir is None:
            self.notify("no runs folder to write to", severity="error")
            return
        path = self.runs_dir / filename(self.result)
        stem, count = path.stem, 1
        while path.exists():  # twice in one second: -2, -3, ...
            count += 1
            path = path.with_name(f"{stem}-{count}{path.suffix}")
        try:
            await asyncio.to_thread(save_heatmaps, self.result, path)
        except (OSError, ValueError) as exc:
            self.notify(f"cannot write {path}: {exc}", title="heatmap", severity="error")
            return
        self.notify(f"wrote {path}", title="heatmap")
