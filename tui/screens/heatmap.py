"""The similarity matrices in the terminal: one heatmap per stack, drawn with half-block characters (two
matrix rows per text line, two columns per block), with the similarity groups on rulers alongside."""

from __future__ import annotations

from typing import Any

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from dit_explore.engine.core.heatmap import color_scale, colormap
from dit_explore.engine.core.similarity import SimilarityResult, group_names
from dit_explore.tui.widgets.layer_grid import group_style


def pixel_grid(matrix: list[list[float]], scale: tuple[float, float]) -> list[list[tuple[int, int, int]]]:
    """One RGB per matrix cell (the same colormap as similarity.png)."""
    lo, hi = scale
    return [[colormap(min(1.0, max(0.0, (v - lo) / (hi - lo) if hi > lo else 1.0))) for v in row] for row in matrix]


class MatrixView(Widget):
    """A matrix as half-block cells (two columns per block), with rulers along the top and the left
    in the grid's group colors and letters, so groups read without covering any value."""

    DEFAULT_CSS = """
    MatrixView {
        width: auto;
        height: auto;
    }
    """

    def __init__(self, position: int, stack: str, matrix: list[list[float]], groups: list[tuple[int, int]],
                 scale: tuple[float, float]) -> None:
        super().__init__()
        self.position = position
        self.stack = stack
        self.groups = groups
        self.pixels = pixel_grid(matrix, scale)

    def get_content_width(self, container: Any, viewport: Any) -> int:
        return 2 + 2 * len(self.pixels)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return 1 + (len(self.pixels) + 1) // 2

    def _group(self, block: int) -> tuple[str, Color]:
        glyph, var = group_style(self.groups, self.position, self.stack, block)
        return glyph, Color.parse(self.app.theme_variables.get(var, "#888888"))

    def render_line(self, y: int) -> Strip:
        n = len(self.pixels)
        if y == 0:  # top ruler: each column's group letter on its group color
            segments = [Segment("  ")]
            for j in range(n):
                glyph, color = self._group(j)
                segments.append(Segment(f"{glyph} ", Style(color=Color.parse("#000000"), bgcolor=color)))
            return Strip(segments)
        r = 2 * (y - 1)
        if r >= n:
            return Strip.blank(2 + 2 * n)
        top, bottom = self.pixels[r], self.pixels[r + 1] if r + 1 < n else None
        left_bottom = self._group(r + 1)[1] if r + 1 < n else None
        segments = [Segment("▀", Style(color=self._group(r)[1], bgcolor=left_bottom)), Segment(" ")]
        for j in range(n):
            fg = Color.from_rgb(*top[j])
            bg = Color.from_rgb(*bottom[j]) if bottom is not None else None
            segments.append(Segment("▀▀", Style(color=fg, bgcolor=bg)))
        return Strip(segments)


class HeatmapScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HeatmapScreen {
        align: center middle;
    }
    HeatmapScreen > VerticalScroll {
        width: 95%;
        height: 95%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    HeatmapScreen Horizontal {
        height: auto;
    }
    HeatmapScreen .panel {
        width: auto;
        min-width: 40;
        height: auto;
        margin: 0 3 1 0;
    }
    """
    BINDINGS = [Binding("escape,t,q", "dismiss", "close")]

    def __init__(self, result: SimilarityResult) -> None:
        super().__init__()
        self.result = result

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="heatmaps"):
            yield Static(self._header(), id="heatmap-header")
            yield from self._panels()

    def _header(self) -> Text:
        r = self.result
        lo, hi = color_scale(r)
        text = Text(f"block similarity · {r.model} · {len(r.prompts)} prompts × {r.steps} steps · seed {r.seed}\n",
                    style="bold")
        text.append("cosine ")
        for k in range(9):
            value = lo + (hi - lo) * k / 8
            text.append("  ", style=Style(bgcolor=Color.from_rgb(*colormap(k / 8))))
            if k in (0, 4, 8):
                text.append(f" {value:.2f} ")
        text.append("   rulers: each block's similarity group, as in the grid   (t or escape closes)", style="dim")
        return text

    def _panels(self) -> ComposeResult:
        scale = color_scale(self.result)
        with Horizontal():
            for position, (name, stack) in enumerate(self.result.stacks.items()):
                names = group_names(len(stack.groups))
                title = Text(f"{name} · {stack.blocks} blocks\n", style="bold")
                title.append(" | ".join(f"{n} {a}-{b}" if a != b else f"{n} {a}" for n, (a, b) in zip(names, stack.groups)),
                             style="dim")
                with VerticalScroll(classes="panel"):  # a tall matrix scrolls on its own
                    yield Static(title)
                    yield MatrixView(position, name, stack.matrix, stack.groups, scale)
