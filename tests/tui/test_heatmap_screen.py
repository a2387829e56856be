"""The heatmap screen (t): the matrices scale with the space the screen has (square blocks, k columns by
k half-rows), carry block indices along the top and the left, and `w` writes similarity.png.

Everything here is read from what the screen draws (the strips of each matrix, cell by cell), not from
the widget's own notion of its geometry."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.color import Color
from textual.app import App

from dit_explore.engine.core.heatmap import color_scale, colormap, render_heatmaps, save_heatmaps
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.similarity import SimilarityResult
from dit_explore.tui.screens.heatmap import HeatmapScreen, MatrixView
from dit_explore.tui.themes import available_themes
from tests.tui.stub_engine import synthetic_result

HALF = "▀"


def flux_result() -> SimilarityResult:
    return synthetic_result(resolve("flux-schnell"))  # double 19, single 38: layout only, no weights


class Host(App[None]):
    def __init__(self, result: SimilarityResult, runs_dir: Path) -> None:
        super().__init__()
        self.result, self.runs_dir = result, runs_dir

    def on_mount(self) -> None:
        for theme in available_themes().values():
            self.register_theme(theme)
        self.theme = "dit-dark"
        self.push_screen(HeatmapScreen(self.result, self.runs_dir))


@dataclass
class Cell:
    char: str
    fg: tuple[int, int, int] | None
    bg: tuple[int, int, int] | None


def rgb(color: Color | None) -> tuple[int, int, int] | None:
    if color is None:
        return None
    t = color.get_truecolor()
    return (t.red, t.green, t.blue)


def cells(view: MatrixView) -> list[list[Cell]]:
    """Every line the view draws, one Cell per column."""
    out = []
    for y in range(view.size.height):
        row: list[Cell] = []
        for segment in view.render_line(y):
            style = segment.style
            for ch in segment.text:
                row.append(Cell(ch, rgb(style.color) if style else None, rgb(style.bgcolor) if style else None))
        out.append(row)
    return out


@dataclass
class Measured:
    x0: int  # first column of the matrix
    y0: int  # first line of the matrix
    columns_per_block: int
    half_rows_per_block: int
    lines: list[list[Cell]]


def pixel(result_matrix: list[list[float]], scale: tuple[float, float], i: int, j: int) -> tuple[int, int, int]:
    lo, hi = scale
    return colormap((result_matrix[i][j] - lo) / (hi - lo))


def measure(view: MatrixView, matrix: list[list[float]], scale: tuple[float, float]) -> Measured:
    """Where block (0, 0) is drawn and how many columns and half-rows it covers, from the drawn cells
    and the colors the matrix values should have."""
    lines = cells(view)
    c00, c01, c10 = pixel(matrix, scale, 0, 0), pixel(matrix, scale, 0, 1), pixel(matrix, scale, 1, 0)
    assert c00 not in (c01, c10)  # the synthetic matrix tells block 0 from its neighbors
    y0, x0 = next((y, x) for y, line in enumerate(lines) for x, c in enumerate(line) if c.char == HALF and c.fg == c00)
    width = 0
    while lines[y0][x0 + width].fg == c00:
        width += 1
    assert lines[y0][x0 + width].fg == c01
    half_rows = []  # the color of column x0, half-row by half-row
    for line in lines[y0:]:
        half_rows += [line[x0].fg, line[x0].bg]
    height = half_rows.index(c10)
    assert set(half_rows[:height]) == {c00}
    return Measured(x0, y0, width, height, lines)


async def mounted(size: tuple[int, int], tmp_path: Path) -> dict[str, Any]:
    result = flux_result()
    app = Host(result, tmp_path / "runs")
    out: dict[str, Any] = {}
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, HeatmapScreen)
        scale = color_scale(result)
        views = list(screen.query(MatrixView))
        out["views"] = [(v.stack, v.size, v.region, measure(v, result.stacks[v.stack].matrix, scale)) for v in views]
        out["area"] = screen.query_one("#heatmap-matrices").region
    return out


def test_matrices_grow_with_the_screen_and_blocks_stay_square(tmp_path: Path) -> None:
    small = asyncio.run(mounted((100, 30), tmp_path))
    large = asyncio.run(mounted((200, 60), tmp_path))
    assert [v[0] for v in small["views"]] == ["double", "single"]
    for shown in (small, large):
        ks = {m.columns_per_block for *_, m in shown["views"]}
        assert len(ks) == 1  # one scale for every stack, so they compare
        for _stack, _size, region, m in shown["views"]:
            assert m.columns_per_block == m.half_rows_per_block >= 1  # square blocks
            assert shown["area"].contains_region(region)  # fits: no scrolling
    k_small, k_large = small["views"][0][3].columns_per_block, large["views"][0][3].columns_per_block
    assert k_large > k_small
    for (_, s_size, *_), (_, l_size, *_) in zip(small["views"], large["views"]):
        assert l_size.width > s_size.width and l_size.height > s_size.height
    # k is the largest that fits: one more and the 38-block matrix would leave the area (or the row
    # of matrices would be wider than it)
    for shown in (small, large):
        area, k = shown["area"], shown["views"][0][3].columns_per_block
        needed_h = max(m.y0 + math.ceil(n * (k + 1) / 2) for n, (*_, m) in zip((19, 38), shown["views"]))
        needed_w = sum(m.x0 + n * (k + 1) for n, (*_, m) in zip((19, 38), shown["views"]))
        assert needed_h > area.height or needed_w > area.width


@pytest.mark.parametrize("size", [(100, 30), (200, 60)])
def test_block_indices_sit_at_their_blocks(tmp_path: Path, size: tuple[int, int]) -> None:
    shown = asyncio.run(mounted(size, tmp_path))
    for stack, _size, _region, m in shown["views"]:
        n, k = (19 if stack == "double" else 38), m.columns_per_block
        # along the top: the line above the ruler above the matrix; each number starts at its block
        top = "".join(c.char for c in m.lines[m.y0 - 2])
        found = [(int(t.group()), t.start()) for t in re.finditer(r"\d+", top)]
        assert found and found[0][0] == 0 and len(found) >= 3
        for block, x in found:
            assert x == m.x0 + block * k, (stack, block, x)
        steps = {b - a for (a, _), (b, _) in itertools.pairwise(found)}
        assert len(steps) == 1 and steps.pop() in (1, 2, 5, 10)  # every few blocks, evenly
        # along the left: each number on the line where its block's first half-row is
        left = [(int(t.group()), y) for y, line in enumerate(m.lines[m.y0 :])
                for t in re.finditer(r"\d+", "".join(c.char for c in line[: m.x0]))]
        assert [b for b, _ in left] == [b for b, _ in found if b < n]
        for block, y in left:
            assert y == block * k // 2, (stack, block, y)


def test_w_writes_the_heatmaps_png_into_the_runs_folder(tmp_path: Path) -> None:
    result = flux_result()
    runs = tmp_path / "runs"
    app = Host(result, runs)
    notes: list[str] = []

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app.notify = lambda message, **kw: notes.append(message)  # type: ignore[method-assign]
            await pilot.press("w")
            for _ in range(200):
                if list(runs.glob("*.png")):
                    break
                await asyncio.sleep(0.05)
            await pilot.pause()

    asyncio.run(scenario())
    (written,) = list(runs.glob("*.png"))
    assert re.fullmatch(r"similarity-flux-schnell-\d{8}-\d{6}\.png", written.name)
    expected = tmp_path / "expected.png"
    save_heatmaps(result, expected)
    assert written.read_bytes() == expected.read_bytes()
    with Image.open(written) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(render_heatmaps(result)))
    assert any(str(written) in note for note in notes)


def test_the_explorer_writes_into_its_runs_folder(tmp_path: Path) -> None:
    """t then w in the explorer: the PNG lands in --runs-dir (the stub engine's analysis is the result)."""
    from tests.tui.test_snapshots import flux_app

    app = flux_app(tmp_path)
    runs = tmp_path / "runs"

    async def scenario() -> None:
        async with app.run_test(size=(150, 48)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.session.similarity is not None:
                    break
            await pilot.press("t")
            assert isinstance(app.screen, HeatmapScreen)
            await pilot.press("w")
            for _ in range(200):
                if list(runs.glob("similarity-*.png")):
                    break
                await asyncio.sleep(0.05)

    asyncio.run(scenario())
    (written,) = list(runs.glob("similarity-*.png"))
    assert app.session.similarity is not None
    with Image.open(written) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(render_heatmaps(app.session.similarity)))
