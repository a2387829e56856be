"""Contact sheets: every image lands whole in its row and column, marks and groups show, bad input is refused;
the toy strategy sheet holds the very images eval scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.sheet import RIGHT, WRONG, contact_sheet, main


def _boxes(sheet: Image.Image, colours: list[list[tuple[int, int, int]]]) -> list[list[tuple[int, int, int, int]]]:
    pixels = np.asarray(sheet)
    out = []
    for row in colours:
        line = []
        for colour in row:
            ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
            line.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        out.append(line)
    return out


def test_cells_land_whole_in_order_with_marks_and_group_gaps() -> None:
    colours = [[(10 + 40 * c, 100 + 50 * r, 200) for c in range(4)] for r in range(3)]
    cells = [[Image.new("RGB", (8, 6), colour) for colour in row] for row in colours]
    marks = [[True, False, None, True], [None] * 4, [False] * 4]
    sheet = contact_sheet(cells, ["full", "skip", "repeat"], ["a", "b", "c", "d"],
                          groups=[("one", 2), ("two", 2)], marks=marks, scale=3)
    boxes = _boxes(sheet, colours)
    for r, row in enumerate(boxes):
        for c, (x0, y0, x1, y1) in enumerate(row):
            assert (x1 - x0, y1 - y0) == (24, 18)  # scaled 3x, nothing cut off
            corner = tuple(np.asarray(sheet)[y0, x1 - 1])
            assert corner == {True: RIGHT, False: WRONG, None: colours[r][c]}[marks[r][c]]
        assert [b[0] for b in row] == sorted(b[0] for b in row)  # columns left to right
    assert [row[0][1] for row in boxes] == sorted(row[0][1] for row in boxes)  # rows top to bottom
    gaps = [boxes[0][c + 1][0] - boxes[0][c][2] for c in range(3)]
    assert gaps[1] > gaps[0] == gaps[2]  # between the groups, a wider gap
    assert boxes[0][0][0] > 20  # the row labels are on the left


def test_mismatched_labels_and_groups_are_refused() -> None:
    cells = [[Image.new("RGB", (4, 4))] * 2]
    with pytest.raises(ValueError, match="column labels"):
        contact_sheet(cells, ["r"], ["only one"])
    with pytest.raises(ValueError, match="groups"):
        contact_sheet(cells, ["r"], ["a", "b"], groups=[("g", 3)])


def test_bad_captions_and_scales_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toy-flux", "--out", str(tmp_path / "s.png"), "--caption", "a lighthouse at dusk"]) == 2
    assert main(["toy-flux", "--out", str(tmp_path / "s.png"), "--scale", "0"]) == 2
    assert main(["tiny-flux", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2  # no saved plans
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not list(tmp_path.iterdir())


def test_the_toy_sheet_shows_the_image_eval_scores(tmp_path: Path) -> None:
    """The full-model cell of a caption is the image Generator makes for caption i with seed i (as eval
    does), generated here independently; the other rows are the six saved plans."""
    import torch

    from dit_explore.engine.core.plan import Plan
    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.core.shapes import CAPTIONS
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import load

    caption = "a small green square at the center"
    out = tmp_path / "sheet.png"
    assert main(["toy-flux", "--out", str(out), "--caption", caption, "--scale", "1", "--device", "cpu"]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    source = resolve("toy-flux")
    i = CAPTIONS.index(caption)
    settings = resolve_settings(source.defaults)
    result = Generator(load(source, torch.device("cpu"), torch.float32)).generate(
        caption, replace(settings, seed=settings.seed + i), Plan())
    assert result.image is not None
    expected = np.asarray(result.image.convert("RGB"))
    h, w = expected.shape[:2]
    keep = w - 8  # the corner mark covers the top right
    found = [(y, x) for y in range(sheet.shape[0] - h + 1) for x in range(sheet.shape[1] - w + 1)
             if np.array_equal(sheet[y, x + 10], expected[0, 10])
             and np.array_equal(sheet[y:y + h, x:x + keep], expected[:, :keep])]
    assert len(found) == 1  # exactly once: the full model's row, the first of seven
    assert sheet.shape[0] > 7 * h and found[0][0] < sheet.shape[0] - 6 * h
