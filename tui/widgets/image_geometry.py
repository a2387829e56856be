"""Where the image pane puts its pictures: pure functions of sizes (no Textual, no terminal).

A terminal cell shows `CellSize` pixels of a picture, and that is what keeps an image's shape:

- halfcell draws two pixels per cell, one above the other, and unicode one shade character per cell of
  a picture sampled twice as finely down as across: both are 1 x 2 (a cell is about twice as tall as
  wide, so one halfcell pixel is about square);
- sixel and Kitty's graphics protocol (tgp) draw real pixels: a cell is the terminal's cell size in
  pixels, as textual-image reports it (it asks the terminal once, before the app starts);
- a size nobody could tell (over SSH the terminal may not answer, or answer nonsense) is taken as
  `DEFAULT_CELL`, 10 x 20, which is also textual-image's own fallback: a cell twice as tall as wide.

`fit` gives the largest box of whole cells whose pixel shape is the image's; `arrange` lays out the
pane's pictures (a row, two columns, or a column, whichever shows them largest), each with its caption
rows and a gutter of blank columns between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

RENDERERS = ("halfcell", "unicode", "sixel", "tgp")
GUTTER = 2  # blank columns between two pictures side by side
CAPTION_ROWS = 2  # a title above each picture, one detail line under it


class CellSize(NamedTuple):
    """Pixels of a picture one terminal cell shows."""

    width: int
    height: int


DEFAULT_CELL = CellSize(10, 20)
TEXT_CELL = CellSize(1, 2)  # halfcell and unicode


def plausible(cell: tuple[int, int]) -> bool:
    """A cell size a real terminal font could have (2-64 px wide, 1 to 4 times as tall as wide)."""
    width, height = cell
    return 2 <= width <= 64 and 4 <= height <= 256 and 1.0 <= height / width <= 4.0


def cell_pixels(renderer: str, reported: tuple[int, int] | None) -> CellSize:
    """The cell size to lay pictures out with, for a renderer and the cell size the terminal reported
    (None: it could not be asked)."""
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r} (known: {', '.join(RENDERERS)})")
    if renderer in ("halfcell", "unicode"):
        return TEXT_CELL
    if reported is None or not plausible(reported):
        return DEFAULT_CELL
    return CellSize(*reported)


def fit(image: tuple[int, int], available: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int]:
    """Cells (columns, rows) to draw an image of `image` pixels in, at most `available` cells: as large
    as fits, with the image's shape in pixels (columns x cell width by rows x cell height). (0, 0) when
    nothing fits."""
    width, height = image
    columns, rows = available
    cell_w, cell_h = cell
    if min(width, height, columns, rows, cell_w, cell_h) <= 0:
        return 0, 0
    scale = min(columns * cell_w / width, rows * cell_h / height)  # picture pixels per image pixel
    return (max(1, min(columns, round(width * scale / cell_w))),
            max(1, min(rows, round(height * scale / cell_h))))


def aspect_error(image: tuple[int, int], box: tuple[int, int], cell: tuple[int, int]) -> float:
    """How far a box's shape in pixels is from the image's: |box aspect / image aspect - 1|."""
    (width, height), (columns, rows), (cell_w, cell_h) = image, box, cell
    return abs((columns * cell_w / (rows * cell_h)) / (width / height) - 1)


@dataclass(frozen=True)
class Arrangement:
    """`columns` x `rows` grid cells; each picture gets at most `space` cells (captions and gutters
    excluded) and is drawn in `boxes[i]` cells."""

    columns: int
    rows: int
    space: tuple[int, int]
    boxes: tuple[tuple[int, int], ...]


def arrange(images: Sequence[tuple[int, int]], area: tuple[int, int], cell: tuple[int, int], *,
            captions: int = CAPTION_ROWS, gutter: int = GUTTER) -> Arrangement:
    """Lay out pictures of these pixel sizes in `area` cells: one row, or fewer columns (a last, short row
    is centered), whichever draws them with the most pixels; a tie goes to fewer rows."""
    count = max(1, len(images))
    best: tuple[float, int, Arrangement] | None = None
    for columns in range(count, 0, -1):
        rows = math.ceil(count / columns)
        space = (max(0, (area[0] - gutter * (columns - 1)) // columns), max(0, area[1] // rows - captions))
        boxes = tuple(fit(image, space, cell) for image in images)
        shown = float(sum(c * r for c, r in boxes))
        candidate = Arrangement(columns, rows, space, boxes)
        if best is None or shown > best[0] or (shown == best[0] and rows < best[1]):
            best = (shown, rows, candidate)
    assert best is not None
    return best[2]
