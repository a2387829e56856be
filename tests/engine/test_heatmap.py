"""Similarity heatmaps (engine/core/heatmap.py), checked by reading pixels of the rendered figure.

Results are built by hand: a planted two-stack example (double: 4 blocks, single: 8 blocks in groups,
and an all-blocks matrix of 12 whose stack blocks are the stacks' matrices). Expected colors are computed
here from the viridis anchors, independently of the module's colormap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.core.heatmap import (
    ALL_TITLE,
    OUTLINE,
    OUTLINE_WIDTH,
    cell_center,
    color_scale,
    colormap,
    panel_geometry,
    render_heatmaps,
    save_heatmaps,
)
from dit_explore.engine.core.similarity import SimilarityResult, StackResult

VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]
TOLERANCE = 3


def expected_rgb(t: float) -> tuple[float, float, float]:
    """Linear interpolation between the nine anchors, written out without numpy."""
    anchors = [tuple(int(h[k : k + 2], 16) for k in (1, 3, 5)) for h in VIRIDIS]
    t = min(1.0, max(0.0, t))
    pos = t * (len(anchors) - 1)
    k = min(int(pos), len(anchors) - 2)
    f = pos - k
    r, g, b = (anchors[k][c] + (anchors[k + 1][c] - anchors[k][c]) * f for c in range(3))
    return r, g, b


def close(pixel: tuple[int, ...], rgb: tuple[float, ...], tol: float = TOLERANCE) -> bool:
    return all(abs(p - e) <= tol for p, e in zip(pixel[:3], rgb, strict=True))


def luminance(rgb: tuple[float, ...]) -> float:
    r, g, b = rgb[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def planted_matrix(n: int, groups: list[tuple[int, int]], base: float, within: float) -> np.ndarray:
    """`within` inside a group, `base` minus a little per distance outside, 1 on the diagonal."""
    label = np.zeros(n, dtype=int)
    for k, (a, b) in enumerate(groups):
        label[a : b + 1] = k
    idx = np.arange(n)
    m = np.where(label[:, None] == label[None, :], within, base - 0.02 * np.abs(idx[:, None] - idx[None, :]))
    np.fill_diagonal(m, 1.0)
    return m


def two_stack_result() -> SimilarityResult:
    double_groups = [(0, 1), (2, 3)]
    single_groups = [(0, 0), (1, 4), (5, 7)]
    full = planted_matrix(12, [(0, 1), (2, 3), (4, 4), (5, 8), (9, 11)], base=0.3, within=0.8)
    double = full[:4, :4]
    single = full[4:, 4:]
    return SimilarityResult(
        model="test/planted",
        stacks={"double": StackResult(4, double.tolist(), double_groups),
                "single": StackResult(8, single.tolist(), single_groups)},
        order=[("double", i) for i in range(4)] + [("single", i) for i in range(8)],
        matrix=full.tolist(),
        groups=[(0, 1), (2, 3), (4, 4), (5, 8), (9, 11)],
        prompts=["a", "b", "c"],
        steps=4,
        seed=7,
        settings={"width": 256, "height": 256},
    )


def stacks_result(sizes: dict[str, int]) -> SimilarityResult:
    """One stack per entry, each its own block of a decaying all-blocks matrix, one group per stack."""
    total = sum(sizes.values())
    idx = np.arange(total)
    full = 1.0 - 0.5 * np.abs(idx[:, None] - idx[None, :]) / max(total - 1, 1)
    stacks: dict[str, StackResult] = {}
    order: list[tuple[str, int]] = []
    start = 0
    for name, n in sizes.items():
        sub = full[start : start + n, start : start + n]
        stacks[name] = StackResult(n, sub.tolist(), [(0, n - 1)])
        order += [(name, i) for i in range(n)]
        start += n
    return SimilarityResult("test/stacks", stacks, order, full.tolist(), [(0, total - 1)], ["p"], 2, 0)


def centers(result: SimilarityResult, panel: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Every cell's center pixel of one panel, from panel_geometry (checked against cell_center below)."""
    g = panel_geometry(result)[panel]
    return {(i, j): (g.x + j * g.cell + g.cell // 2, g.y + i * g.cell + g.cell // 2)
            for i in range(g.blocks) for j in range(g.blocks)}


@pytest.fixture(scope="module")
def planted() -> tuple[SimilarityResult, Image.Image]:
    result = two_stack_result()
    return result, render_heatmaps(result)


def test_colormap_matches_the_anchors() -> None:
    for t in [0.0, 1 / 8, 0.3, 0.5, 0.77, 1.0]:
        assert close(colormap(t), expected_rgb(t), 1)
    assert colormap(0.0) == (0x44, 0x01, 0x54)
    assert colormap(1.0) == (0xFD, 0xE7, 0x25)
    assert colormap(-1.0) == colormap(0.0) and colormap(2.0) == colormap(1.0)  # clipped


def test_scale_is_global_minimum_to_one(planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, _ = planted
    low = min(min(min(row) for row in m) for m in [result.matrix] + [s.matrix for s in result.stacks.values()])
    assert color_scale(result) == (pytest.approx(low), 1.0)


def test_panels_in_stack_order_then_all_blocks(planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, image = planted
    geometry = panel_geometry(result)
    assert [g.title for g in geometry] == ["double", "single", ALL_TITLE]
    assert [g.blocks for g in geometry] == [4, 8, 12]
    xs = [g.x for g in geometry]
    assert xs == sorted(xs) and len({g.y for g in geometry}) == 1  # one row, left to right
    for g in geometry:
        assert 400 <= g.size <= 520 and g.cell >= 4
        assert g.x + g.size < image.width and g.y + g.size < image.height


def test_cell_centers_have_the_colormap_color(planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, image = planted
    low, high = color_scale(result)
    matrices = [s.matrix for s in result.stacks.values()] + [result.matrix]
    assert cell_center(result, 1, 2, 5) == centers(result, 1)[2, 5]
    assert cell_center(result, 2, 11, 0) == centers(result, 2)[11, 0]
    for panel, matrix in enumerate(matrices):
        n = len(matrix)
        where = centers(result, panel)
        for i in range(n):
            for j in range(n):
                t = (matrix[i][j] - low) / (high - low)
                pixel = image.getpixel(where[i, j])
                assert close(pixel, expected_rgb(t)), (panel, i, j, pixel, expected_rgb(t))


def test_higher_similarity_is_brighter(planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, image = planted
    single = result.stacks["single"].matrix  # panel 1
    pairs = [(i, j) for i in range(8) for j in range(8)]
    values = sorted({round(single[i][j], 6) for i, j in pairs})
    assert len(values) >= 3
    where = centers(result, 1)
    by_value = {round(single[i][j], 6): image.getpixel(where[i, j]) for i, j in pairs}
    lum = [luminance(by_value[v]) for v in values]
    assert lum == sorted(lum) and lum[-1] > lum[0] + 100
    top, bottom = by_value[values[-1]], by_value[values[0]]
    assert top[0] > bottom[0] and top[1] > bottom[1] and top[2] < bottom[2]  # yellow vs purple


def test_group_boundaries_are_outlined(planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, image = planted
    for panel, groups in enumerate([s.groups for s in result.stacks.values()] + [result.groups]):
        g = panel_geometry(result)[panel]
        for a, b in groups:
            start, end = a * g.cell, (b + 1) * g.cell  # the group square, in panel pixels
            mid = (start + end) // 2
            for w in range(OUTLINE_WIDTH):
                for x, y in [(mid, start + w), (mid, end - 1 - w), (start + w, mid), (end - 1 - w, mid)]:
                    assert image.getpixel((g.x + x, g.y + y)) == OUTLINE, (panel, a, b, x, y)
            # just inside the outline, the cell's own color again
            assert image.getpixel((g.x + mid, g.y + start + OUTLINE_WIDTH + 1)) != OUTLINE


def test_boundary_lines_cross_the_whole_panel(planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, image = planted
    g = panel_geometry(result)[1]  # single: groups start at 1 and 5
    low, high = color_scale(result)
    m = result.stacks["single"].matrix
    for a in (1, 5):
        col = g.x + a * g.cell
        i = 7 if a == 1 else 0  # a row far from the diagonal
        line = image.getpixel((col, g.y + i * g.cell + g.cell // 2))
        cell = expected_rgb((m[i][a] - low) / (high - low))
        assert luminance(line) > luminance(cell) + 20  # lightened toward the outline color


def test_image_grows_with_the_number_of_panels() -> None:
    one = render_heatmaps(stacks_result({"blocks": 6}))  # 2 panels
    two = render_heatmaps(stacks_result({"double": 4, "single": 6}))  # 3 panels
    three = render_heatmaps(stacks_result({"down": 3, "mid": 2, "up": 4}))  # 4 panels: a second row
    assert one.width < two.width
    assert two.height < three.height
    assert len(panel_geometry(stacks_result({"down": 3, "mid": 2, "up": 4}))) == 4


def test_all_blocks_labels_and_second_row() -> None:
    result = stacks_result({"down": 3, "mid": 2, "up": 4})
    geometry = panel_geometry(result)
    assert geometry[3].y > geometry[0].y and geometry[3].x == geometry[0].x  # wrapped under the first
    image = render_heatmaps(result)
    assert close(image.getpixel(cell_center(result, 3, 8, 8)), expected_rgb(1.0))


@pytest.mark.parametrize("sizes", [{"only": 1}, {"pair": 2}, {"a": 1, "b": 2}])
def test_degenerate_sizes_render(sizes: dict[str, int]) -> None:
    result = stacks_result(sizes)
    image = render_heatmaps(result)
    low, high = color_scale(result)
    assert low < high == 1.0
    for panel, g in enumerate(panel_geometry(result)):
        assert g.cell >= 4 and g.size <= 520
        assert close(image.getpixel(cell_center(result, panel, 0, 0)), expected_rgb(1.0))


def test_uniform_matrix_renders_yellow() -> None:
    result = stacks_result({"s": 3})
    for m in [result.matrix] + [s.matrix for s in result.stacks.values()]:
        for row in m:
            row[:] = [1.0] * len(row)
    image = render_heatmaps(result)
    assert close(image.getpixel(cell_center(result, 0, 0, 2)), expected_rgb(1.0))


def test_many_blocks_stay_in_size() -> None:
    result = stacks_result({"double": 19, "single": 38})
    image = render_heatmaps(result)
    for g in panel_geometry(result):
        assert 400 <= g.size <= 520
    assert image.mode == "RGB"


def test_save_writes_a_png_and_no_temp_file(tmp_path: Path, planted: tuple[SimilarityResult, Image.Image]) -> None:
    result, image = planted
    path = tmp_path / "out" / "similarity.png"
    save_heatmaps(result, path)
    save_heatmaps(result, path)  # replacing an existing file
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as saved:
        saved.load()
        assert saved.size == image.size
        where = cell_center(result, 0, 0, 0)
        assert saved.convert("RGB").getpixel(where) == image.getpixel(where)
    assert os.listdir(path.parent) == ["similarity.png"]
