"""The similarity matrices in the terminal: one heatmap per stack, drawn with half-block characters (two
matrix rows per text line, two columns per block), each similarity group outlined in white."""

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

from engine.heatmap import color_scale, colormap
from engine.similarity import SimilarityResult, group_names

OUTLINE = (255, 255, 255)


def pixel_grid(matrix: list[list[float]], groups: list[tuple[int, int]], scale: tuple[float, float]) -> list[list[tuple[int, int, int]]]:
    """One RGB per matrix cell; the cells on the border of each diagonal group square are the outline."""
    lo, hi = scale
    n = len(matrix)
    group_of = {}
    for a, b in groups:
        for i in range(a, b + 1):
            group_of[i] = (a, b)
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            a, b = group_of.get(i, (i, i))
            if a <= j <= b and (i in (a, b) or j in (a, b)) and b > a:
                row.append(OUTLINE)
            else:
                t = (matrix[i][j] - lo) / (hi - lo) if hi > lo else 1.0
                row.append(colormap(min(1.0, max(0.0, t))))
        rows.append(row)
    return rows


class MatrixView(Widget):
    """A matrix as half-block cells, two columns per block."""

    DEFAULT_CSS = """
    MatrixView {
        width: auto;
        height: auto;
    }
    """

    def __init__(self, matrix: list[list[float]], groups: list[tuple[int, int]], scale: tuple[float, float]) -> None:
        super().__init__()
        self.pixels = pixel_grid(matrix, groups, scale)

    def get_content_width(self, container: Any, viewport: Any) -> int:
        return 2 * len(self.pixels)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return (len(self.pixels) + 1) // 2

    def render_line(self, y: int) -> Strip:
        n = len(self.pixels)
        top = self.pixels[2 * y] if 2 * y < n else None
        bottom = self.pixels[2 * y + 1] if 2 * y + 1 < n else None
        if top is None:
            return Strip.blank(2 * n)
        segments = []
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
        text.append("   white outline: a similarity group   (t or escape closes)", style="dim")
        return text

    def _panels(self) -> ComposeResult:
        scale = color_scale(self.result)
        with Horizontal():
            for name, stack in self.result.stacks.items():
                names = group_names(len(stack.groups))
                title = Text(f"{name} · {stack.blocks} blocks\n", style="bold")
                title.append(" | ".join(f"{n} {a}-{b}" if a != b else f"{n} {a}" for n, (a, b) in zip(names, stack.groups)),
                             style="dim")
                with VerticalScroll(classes="panel"):  # a tall matrix scrolls on its own
                    yield Static(title)
                    yield MatrixView(stack.matrix, stack.groups, scale)
