"""Similarity heatmaps: the cosine matrices of a SimilarityResult as one PNG, drawn with pillow alone.

The figure, top to bottom and left to right:

* a header: the model, then the number of prompts, steps, seed (and size) and a key to the marks;
* one panel per stack, in `result.stacks` order, then one panel of all blocks in execution order
  (titled ALL_TITLE), three to a row (a fourth panel starts a second row);
* a color bar right of the first row, with the values of its bottom, middle and top.

A panel is its matrix as square cells (row i, column j is S_ij; block 0 at the top left), with block
tick labels left of the rows and under the columns (all-blocks panel: stack initial + index, "D0",
"S12"), its groups as OUTLINE squares (OUTLINE_WIDTH px, inside the group's cells) on the diagonal plus
thin lightened lines across the panel at each group boundary, and a title above: stack name, block count,
and the groups with their names ("single · 38 blocks · first 0 | middle 1 1-9 | ...", wrapped).

Colors: viridis (linear interpolation between the nine ANCHORS), scaled over [the smallest value of any
matrix of the result, 1.0] so panels compare; values outside clip, missing (NaN) values are gray.

For tests and other readers of the pixels: `colormap(t)` is the color of a fraction t of the scale,
`color_scale(result)` the scale, and `cell_center(result, panel, i, j)` the pixel at the center of a
cell (`panel_geometry` gives every panel's matrix origin and cell size).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dit_explore.engine.core.similarity import SimilarityResult, group_names

ANCHORS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
ALL_TITLE = "all blocks (execution order)"

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)
FRAME = (150, 150, 150)
OUTLINE = (255, 255, 255)  # group squares on the diagonal
OUTLINE_WIDTH = 2
LINE_ALPHA = 0.55  # how far the thin boundary lines across a panel go toward OUTLINE
NAN_COLOR = (200, 200, 200)

MAX_COLUMNS = 3
TARGET_PANEL_PX = 460  # a panel's matrix is n * cell px, cell = round(460 / n): 400-520 px up to 130 blocks
MIN_CELL_PX = 4
MARGIN = 24
COLUMN_GAP = 44
ROW_GAP = 28
TICK_PX = 4
BAR_GAP = 40
BAR_WIDTH = 22

HEADER_SIZE = 20
SUBHEADER_SIZE = 14
TITLE_SIZE = 14
TICK_SIZE = 11
BAR_SIZE = 13

_RGB_ANCHORS = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in ANCHORS], dtype=np.float64)
_ANCHOR_T = np.linspace(0.0, 1.0, len(ANCHORS))


def _colormap_array(t: np.ndarray) -> np.ndarray:
    """uint8 RGB of each fraction in `t` (any shape; clipped to [0, 1]; NaN is NAN_COLOR)."""
    t = np.asarray(t, dtype=np.float64)
    flat = t.reshape(-1)
    nan = np.isnan(flat)
    clipped = np.clip(np.where(nan, 0.0, flat), 0.0, 1.0)
    rgb = np.stack([np.interp(clipped, _ANCHOR_T, _RGB_ANCHORS[:, c]) for c in range(3)], axis=-1)
    out = np.rint(rgb).astype(np.uint8)
    out[nan] = NAN_COLOR
    return out.reshape(*t.shape, 3)


def colormap(t: float) -> tuple[int, int, int]:
    """The viridis color of a fraction t of the scale (0: its minimum, dark purple; 1: 1.0, yellow)."""
    r, g, b = _colormap_array(np.array([t]))[0]
    return int(r), int(g), int(b)


def _matrices(result: SimilarityResult) -> list[np.ndarray]:
    out = [np.asarray(s.matrix, dtype=np.float64).reshape(len(s.matrix), -1) for s in result.stacks.values()]
    out.append(np.asarray(result.matrix, dtype=np.float64).reshape(len(result.matrix), -1))
    return out


def color_scale(result: SimilarityResult) -> tuple[float, float]:
    """(low, high) of the colors: the smallest finite value of all the result's matrices, and 1.0.

    A result whose values are all (about) 1 gets low = 0.999, so the scale keeps a width."""
    values = np.concatenate([m.reshape(-1) for m in _matrices(result)] + [np.zeros(0)])
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    return min(low, 1.0 - 1e-3), 1.0


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError, AttributeError):
        return ImageFont.load_default()


def _width(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(right - left)


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    _, top, _, bottom = font.getbbox("Hg|")
    return math.ceil(bottom - top)


def _text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str,
          font: ImageFont.FreeTypeFont | ImageFont.ImageFont, fill: tuple[int, int, int],
          h: str = "l", v: str = "t") -> None:
    """Text whose box is placed at (x, y) by its left/middle/right (h) and top/middle (v).

    The box is the ink's width by the font's height ("H0" for middles, so digits center on a tick)."""
    left, _, right, _ = font.getbbox(text)
    ref = "H0" if v == "m" else "Hg|"
    _, top, _, bottom = font.getbbox(ref)
    width = right - left
    x0 = x - {"l": 0.0, "m": width / 2, "r": width}[h]
    y0 = y - (0.0 if v == "t" else (bottom - top) / 2)
    draw.text((round(x0 - left), round(y0 - top)), text, font=font, fill=fill)


def _wrap(pieces: Sequence[tuple[str, str]], font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          width: int) -> list[str]:
    """Greedy wrap of (separator before, text) pieces; a break drops the separator's leading space."""
    lines: list[str] = []
    current = ""
    for sep, piece in pieces:
        candidate = current + sep + piece if current else piece
        if not current or _width(candidate, font) <= width:
            current = candidate
        else:
            lines.append(current + sep.rstrip())
            current = piece
        while _width(current, font) > width and len(current) > 1:  # one piece wider than a line
            cut = len(current)
            while cut > 1 and _width(current[:cut], font) > width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    return lines


@dataclass
class _Panel:
    name: str
    matrix: np.ndarray
    groups: list[tuple[int, int]]
    labels: list[str]  # a tick label per block
    index: list[int]  # each block's index inside its stack (ticks go on multiples of the step)

    @property
    def blocks(self) -> int:
        return int(self.matrix.shape[0])

    def title_pieces(self) -> list[tuple[str, str]]:
        n = self.blocks
        pieces = [("", self.name), (" · ", f"{n} block" + ("" if n == 1 else "s"))]
        for k, (name, (a, b)) in enumerate(zip(group_names(len(self.groups)), self.groups, strict=True)):
            span = self.labels[a] if a == b else f"{self.labels[a]}-{self.labels[b]}"
            pieces.append((" · " if k == 0 else " | ", f"{name} {span}"))
        return pieces


def _prefixes(names: Sequence[str]) -> dict[str, str]:
    """Each stack's label prefix: its upper-case initial, longer where two stacks would share one."""
    out: dict[str, str] = {}
    for name in names:
        length = 1
        while length < len(name) and any(o != name and o[:length].lower() == name[:length].lower() for o in names):
            length += 1
        prefix = name[:length]
        out[name] = prefix[:1].upper() + prefix[1:]
    return out


def _panels(result: SimilarityResult) -> list[_Panel]:
    panels: list[_Panel] = []
    for name, stack in result.stacks.items():
        m = np.asarray(stack.matrix, dtype=np.float64).reshape(len(stack.matrix), -1)
        n = m.shape[0]
        panels.append(_Panel(name, m, [(int(a), int(b)) for a, b in stack.groups],
                             [str(i) for i in range(n)], list(range(n))))
    prefix = _prefixes(list(result.stacks) + [s for s, _ in result.order if s not in result.stacks])
    m = np.asarray(result.matrix, dtype=np.float64).reshape(len(result.matrix), -1)
    order = list(result.order)[: m.shape[0]]
    order += [("?", i) for i in range(len(order), m.shape[0])]
    panels.append(_Panel(ALL_TITLE, m, [(int(a), int(b)) for a, b in result.groups],
                         [f"{prefix.get(s, s[:1].upper())}{i}" for s, i in order], [i for _, i in order]))
    return panels


def _cell_size(blocks: int) -> int:
    return max(MIN_CELL_PX, round(TARGET_PANEL_PX / max(blocks, 1)))


def _ticks(panel: _Panel, cell: int) -> list[int]:
    """The blocks that get a label: every block when that fits (always up to 20 blocks at the usual
    cell size), else those whose index is a multiple of 2, 5, 10, ..., with stack starts first and no
    two labels overlapping on either axis."""
    n = panel.blocks
    if n == 0:
        return []
    font = _font(TICK_SIZE)
    widths = [_width(label, font) for label in panel.labels]
    height = _line_height(font)
    steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    if n > 20:
        steps = steps[1:]
    step = next((s for s in steps if s * cell >= max(max(widths) + 4, height + 1)), steps[-1])
    candidates = sorted((p for p in range(n) if panel.index[p] % step == 0), key=lambda p: (panel.index[p] != 0, p))
    chosen: list[int] = []
    for p in candidates:
        if all(abs(p - q) * cell >= max((widths[p] + widths[q]) / 2 + 4, height + 1) for q in chosen):
            chosen.append(p)
    return sorted(chosen)


@dataclass(frozen=True)
class PanelGeometry:
    """Where a panel's matrix is: cell (i, j) covers x + j*cell .. x + (j+1)*cell - 1 (columns),
    y + i*cell .. y + (i+1)*cell - 1 (rows)."""

    title: str  # the panel's name (stack name, or ALL_TITLE)
    x: int
    y: int
    cell: int
    blocks: int

    @property
    def size(self) -> int:
        return self.cell * self.blocks


@dataclass
class _Layout:
    width: int
    height: int
    header: list[tuple[str, int, tuple[int, int, int]]]  # (text, font size, color), one per line
    panels: list[_Panel]
    geometry: list[PanelGeometry]
    ticks: list[list[int]]
    titles: list[list[str]]
    title_y: list[int]
    bar: tuple[int, int, int, int]  # x, y, width, height


def _layout(result: SimilarityResult) -> _Layout:
    panels = _panels(result)
    cells = [_cell_size(p.blocks) for p in panels]
    sizes = [c * p.blocks for c, p in zip(cells, panels, strict=True)]
    ticks = [_ticks(p, c) for p, c in zip(panels, cells, strict=True)]
    tick_font, title_font, bar_font = _font(TICK_SIZE), _font(TITLE_SIZE), _font(BAR_SIZE)
    tick_h, title_h, bar_h = _line_height(tick_font), _line_height(title_font), _line_height(bar_font)

    label_w = max([_width(p.labels[t], tick_font) for p, ts in zip(panels, ticks, strict=True) for t in ts] + [8])
    left = label_w + TICK_PX + 4  # room for the row labels, left of each matrix
    below = TICK_PX + 3 + tick_h + 6  # room for the column labels
    matrix_w = max(sizes + [TARGET_PANEL_PX - 60])
    slot_w = left + matrix_w
    columns = min(MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    titles = [_wrap(p.title_pieces(), title_font, matrix_w + COLUMN_GAP // 2) for p in panels]

    scale = color_scale(result)
    decimals = _decimals(scale)
    bar_label_w = max(_width(f"{v:.{decimals}f}", bar_font) for v in _bar_values(scale))
    bar_caption = ["cosine", "similarity"]
    bar_x = MARGIN + columns * slot_w + (columns - 1) * COLUMN_GAP + BAR_GAP
    bar_text_w = max([bar_label_w] + [_width(c, bar_font) - BAR_WIDTH for c in bar_caption])
    width = bar_x + BAR_WIDTH + TICK_PX + 6 + bar_text_w + MARGIN

    n_prompts = len(result.prompts)
    facts = [f"{n_prompts} prompt" + ("" if n_prompts == 1 else "s"), f"{result.steps} steps", f"seed {result.seed}"]
    w, h = result.settings.get("width"), result.settings.get("height")
    if w and h:
        facts.append(f"{w}x{h}")
    key = ["cosine similarity of block outputs", "white squares: groups"]
    header: list[tuple[str, int, tuple[int, int, int]]] = []
    for line in _wrap([("", result.model)], _font(HEADER_SIZE), width - 2 * MARGIN):
        header.append((line, HEADER_SIZE, TEXT))
    sub = [("" if k == 0 else " · ", f) for k, f in enumerate(facts + key)]
    for line in _wrap(sub, _font(SUBHEADER_SIZE), width - 2 * MARGIN):
        header.append((line, SUBHEADER_SIZE, MUTED))
    y = MARGIN + sum(_line_height(_font(size)) + 6 for _, size, _ in header) + 14

    geometry: list[PanelGeometry] = []
    title_y: list[int] = []
    bar = (bar_x, 0, BAR_WIDTH, 0)
    for r in range(rows):
        members = range(r * columns, min((r + 1) * columns, len(panels)))
        top_h = max(len(titles[k]) for k in members) * (title_h + 4) + 8
        if r == 0:
            top_h = max(top_h, len(bar_caption) * (bar_h + 3) + bar_h // 2 + 10)
        for c, k in enumerate(members):
            slot_x = MARGIN + c * (slot_w + COLUMN_GAP)
            title_y.append(y + top_h - 8 - len(titles[k]) * (title_h + 4))
            geometry.append(PanelGeometry(panels[k].name, slot_x + left, y + top_h, cells[k], panels[k].blocks))
        row_matrix = max(sizes[k] for k in members)
        if r == 0:
            bar = (bar_x, y + top_h, BAR_WIDTH, max(row_matrix, 120))
        y += top_h + row_matrix + below + ROW_GAP
    height = max(y - ROW_GAP, bar[1] + bar[3] + bar_h) + MARGIN
    return _Layout(width, height, header, panels, geometry, ticks, titles, title_y, bar)


def _bar_values(scale: tuple[float, float]) -> list[float]:
    low, high = scale
    return [low, (low + high) / 2, high]


def _decimals(scale: tuple[float, float]) -> int:
    """Two decimals, more when that would print two of the color bar's values alike."""
    values = _bar_values(scale)
    for decimals in range(2, 7):
        if len({f"{v:.{decimals}f}" for v in values}) == len(values):
            return decimals
    return 6


def panel_geometry(result: SimilarityResult) -> list[PanelGeometry]:
    """Each panel's matrix placement, in drawing order (stacks in `result.stacks` order, then all blocks)."""
    return _layout(result).geometry


def cell_center(result: SimilarityResult, panel: int, i: int, j: int) -> tuple[int, int]:
    """The (x, y) pixel at the center of cell (row i, column j) of panel `panel` (see panel_geometry)."""
    g = panel_geometry(result)[panel]
    return g.x + j * g.cell + g.cell // 2, g.y + i * g.cell + g.cell // 2


def _matrix_pixels(panel: _Panel, cell: int, scale: tuple[float, float]) -> np.ndarray:
    low, high = scale
    n = panel.blocks
    rgb = _colormap_array((panel.matrix - low) / (high - low))
    pixels = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    outline = np.array(OUTLINE, dtype=np.float64)
    for a, _ in panel.groups:  # thin lines across the panel where a group starts
        if 0 < a < n:
            p = a * cell
            for view in (pixels[:, p], pixels[p, :]):
                view[...] = np.rint(view * (1 - LINE_ALPHA) + outline * LINE_ALPHA).astype(np.uint8)
    w = min(OUTLINE_WIDTH, cell)
    for a, b in panel.groups:  # the diagonal squares
        if not 0 <= a <= b < n:
            continue
        s, e = a * cell, (b + 1) * cell
        pixels[s : s + w, s:e] = OUTLINE
        pixels[e - w : e, s:e] = OUTLINE
        pixels[s:e, s : s + w] = OUTLINE
        pixels[s:e, e - w : e] = OUTLINE
    return pixels


def render_heatmaps(result: SimilarityResult) -> Image.Image:
    """The whole figure (RGB) of `result`: header, a panel per stack and one of all blocks, color bar."""
    lay = _layout(result)
    scale = color_scale(result)
    image = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    tick_font, title_font, bar_font = _font(TICK_SIZE), _font(TITLE_SIZE), _font(BAR_SIZE)

    y = MARGIN
    for text, size, color in lay.header:
        _text(draw, MARGIN, y, text, _font(size), color)
        y += _line_height(_font(size)) + 6

    for panel, g, ticks, title, ty in zip(lay.panels, lay.geometry, lay.ticks, lay.titles, lay.title_y, strict=True):
        for k, line in enumerate(title):
            _text(draw, g.x, ty + k * (_line_height(title_font) + 4), line, title_font, TEXT)
        if g.blocks == 0:
            continue
        image.paste(Image.fromarray(_matrix_pixels(panel, g.cell, scale), "RGB"), (g.x, g.y))
        draw.rectangle((g.x - 1, g.y - 1, g.x + g.size, g.y + g.size), outline=FRAME)
        for p in ticks:
            center = p * g.cell + g.cell / 2
            cx, cy = g.x + center, g.y + center
            draw.line((g.x - 2 - TICK_PX, round(cy - 0.5), g.x - 2, round(cy - 0.5)), fill=MUTED)
            _text(draw, g.x - 4 - TICK_PX, cy, panel.labels[p], tick_font, TEXT, h="r", v="m")
            bottom = g.y + g.size + 1
            draw.line((round(cx - 0.5), bottom + 1, round(cx - 0.5), bottom + TICK_PX), fill=MUTED)
            _text(draw, cx, bottom + TICK_PX + 3, panel.labels[p], tick_font, TEXT, h="m")

    bx, by, bw, bh = lay.bar
    t = 1.0 - np.arange(bh, dtype=np.float64) / max(bh - 1, 1)
    column = _colormap_array(t)
    image.paste(Image.fromarray(np.repeat(column[:, None, :], bw, axis=1), "RGB"), (bx, by))
    draw.rectangle((bx - 1, by - 1, bx + bw, by + bh), outline=FRAME)
    decimals = _decimals(scale)
    low, high = scale
    for value in _bar_values(scale):
        vy = by + round((high - value) / (high - low) * (bh - 1))
        draw.line((bx + bw + 1, vy, bx + bw + TICK_PX, vy), fill=MUTED)
        _text(draw, bx + bw + TICK_PX + 4, vy, f"{value:.{decimals}f}", bar_font, TEXT, v="m")
    caption = ["cosine", "similarity"]
    line_h = _line_height(bar_font) + 3
    for k, line in enumerate(caption):
        _text(draw, bx, by - _line_height(bar_font) // 2 - 8 - (len(caption) - k) * line_h, line, bar_font, TEXT)
    return image


def save_heatmaps(result: SimilarityResult, path: Path) -> None:
    """Render `result` and write it to `path` as PNG, atomically (a temp file beside it, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = render_heatmaps(result)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
