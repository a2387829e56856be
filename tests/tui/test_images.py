"""The image pane, geometrically: every picture keeps its image's shape (in pixels: columns x cell width
by rows x cell height) for every renderer and cell size, pictures have a blank gutter between them,
captions sit in rows of their own, and no caption, number or timing outlives the images it describes
(a new plan's run, a cancel, an engine restart). Also: the difference heat image and its scale, a PNG
opened from disk, and any two runs side by side (A/B).

The pane is mounted alone at several terminal sizes, and in the app against a scripted stand-in engine
(the session's real message flow: run requests, previews, images, done, cancel, restart).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Static

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Role, Status
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.runs import png_bytes
from dit_explore.engine.core.sampling import BlockRuns, Settings, Timing
from dit_explore.tui import app as app_module
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.keys import ALL_KEYS, COMPARE_KEYS
from dit_explore.tui.metrics import difference
from dit_explore.tui.session import RunRecord
from dit_explore.tui.widgets import image_pane
from dit_explore.tui.widgets.image_geometry import (
    DEFAULT_CELL,
    TEXT_CELL,
    CellSize,
    arrange,
    aspect_error,
    cell_pixels,
    fit,
)
from dit_explore.tui.widgets.image_pane import (
    DifferenceSlot,
    ImagePane,
    ImageSlot,
    colormap,
    heat,
    scale_text,
)
from dit_explore.tui.widgets.sampling_form import SamplingForm
from tests.tui.pilot import until
from tests.tui.stub_engine import StubEngine

TOLERANCE = 0.10  # a picture's shape in pixels against its image's


# ------------------------------------------------------------------------------------ geometry probes


def layout_of(pane: Any) -> dict[str, Any]:
    """The pane's geometry in screen cells, as plain data. Self-contained (its source also runs in a
    Python 3.12 venv: tests/test_textual_image_312.py)."""

    def box(widget: Any) -> list[int]:
        region = widget.region
        return [region.x, region.y, region.width, region.height]

    slots = []
    for slot in pane.query("PictureSlot"):
        picture = slot.query_one(".picture")
        title, detail = slot.query_one(".title"), slot.query_one(".detail")
        slots.append({
            "id": slot.id,
            "image": list(slot.image.size) if slot.image is not None else None,
            "picture": box(picture) if picture.display and picture.region.area else None,
            "title": box(title), "detail": box(detail),
            "title_text": str(title.render()), "detail_text": str(detail.render()),
        })
    line = pane.query_one("#difference")
    return {"cell": list(pane.cell), "pane": box(pane), "line": box(line), "line_text": str(line.render()),
            "slots": slots}


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def check_geometry(layout: dict[str, Any], *, images: int) -> None:
    """At least `images` pictures with an image; each within TOLERANCE of its image's shape, inside the
    pane, apart from the others (a blank column at least between two side by side), and its captions
    in rows of their own (title above, detail under), overlapping no picture and no other caption."""
    cell_w, cell_h = layout["cell"]
    px, py, pw, ph = layout["pane"]
    slots = layout["slots"]
    drawn = [s for s in slots if s["picture"] is not None]
    assert sum(s["image"] is not None for s in drawn) >= images, layout
    for s in drawn:
        x, y, w, h = s["picture"]
        assert px <= x and x + w <= px + pw and py <= y and y + h <= py + ph, f"{s['id']} leaves the pane: {layout}"
        if s["image"] is not None:
            iw, ih = s["image"]
            shape = (w * cell_w) / (h * cell_h)
            assert abs(shape / (iw / ih) - 1) <= TOLERANCE, (
                f"{s['id']}: {iw}x{ih} image in {w}x{h} cells of {cell_w}x{cell_h} px: shape {shape:.3f}, "
                f"image {iw / ih:.3f}")
        tx, ty, tw, th = s["title"]
        _, dy, dw, dh = s["detail"]
        assert th == 1 and dh == 1 and tw >= 1 and dw >= 1
        assert ty + th <= y, f"{s['id']}: the title is not above its picture"
        assert dy >= y + h, f"{s['id']}: the detail is not under its picture"
        assert tx <= x and x + w <= tx + tw, f"{s['id']}: the title is not over its picture's columns"
    captions = [c for s in slots for c in (s["title"], s["detail"])]
    for caption in captions:
        for s in drawn:
            assert not _overlap(caption, s["picture"]), f"a caption {caption} overlaps {s['id']}: {layout}"
    for a, b in itertools.combinations(captions, 2):
        assert not _overlap(a, b), f"captions {a} and {b} overlap"
    for a, b in itertools.combinations(drawn, 2):
        A, B = a["picture"], b["picture"]
        assert not _overlap(A, B), f"{a['id']} and {b['id']} overlap"
        if A[1] < B[1] + B[3] and B[1] < A[1] + A[3]:  # side by side: a blank gutter between them
            gap = max(B[0] - (A[0] + A[2]), A[0] - (B[0] + B[2]))
            assert gap >= 1, f"{a['id']} and {b['id']} touch: {A} {B}"
    for s in drawn:
        assert not _overlap(layout["line"], s["picture"])


# -------------------------------------------------------------------------------------- pure geometry


@pytest.mark.parametrize(("renderer", "reported", "cell"), [
    ("halfcell", None, TEXT_CELL),
    ("halfcell", (9, 19), TEXT_CELL),  # two pixels per cell whatever the font
    ("unicode", (10, 20), TEXT_CELL),
    ("sixel", (10, 20), CellSize(10, 20)),
    ("sixel", (8, 16), CellSize(8, 16)),
    ("tgp", (9, 21), CellSize(9, 21)),
    ("tgp", (12, 24), CellSize(12, 24)),
    # unknown or nonsense (over SSH the terminal may not answer, or the ioctl says 0 or the whole screen)
    ("sixel", None, DEFAULT_CELL),
    ("tgp", None, DEFAULT_CELL),
    ("tgp", (0, 0), DEFAULT_CELL),
    ("sixel", (1, 1), DEFAULT_CELL),
    ("tgp", (1920, 1080), DEFAULT_CELL),
    ("sixel", (20, 10), DEFAULT_CELL),  # wider than tall: no terminal font
])
def test_the_cell_size_per_renderer_with_a_fallback_for_an_unknown_one(
        renderer: str, reported: tuple[int, int] | None, cell: CellSize) -> None:
    assert cell_pixels(renderer, reported) == cell
    assert DEFAULT_CELL == (10, 20)  # textual-image's own fallback: the renderer scales with the same
    with pytest.raises(ValueError, match="unknown renderer"):
        cell_pixels("auto", None)


@pytest.mark.parametrize(("image", "available", "cell", "box"), [
    # the cases: 64x64 in halfcell used to fill 30 x 31 cells (stretched 2x); 1024² in 35 x 38
    ((64, 64), (30, 31), TEXT_CELL, (30, 15)),
    ((1024, 1024), (35, 38), DEFAULT_CELL, (35, 18)),
    ((128, 64), (40, 40), TEXT_CELL, (40, 10)),
    ((64, 128), (40, 20), TEXT_CELL, (20, 20)),
    ((1024, 1024), (60, 20), CellSize(8, 16), (40, 20)),
    ((1344, 768), (50, 30), CellSize(9, 21), (50, 12)),  # 450 x 252 px for 1.75: 1.786
    ((64, 64), (30, 31), None, None),  # an unknown cell size: the default's
    ((64, 64), (0, 10), TEXT_CELL, (0, 0)),
    ((0, 64), (10, 10), TEXT_CELL, (0, 0)),
])
def test_fit_keeps_the_shape_in_pixels(image: tuple[int, int], available: tuple[int, int],
                                       cell: CellSize | None, box: tuple[int, int] | None) -> None:
    use = cell if cell is not None else cell_pixels("tgp", None)
    got = fit(image, available, use)
    if box is None:  # the unknown cell: DEFAULT_CELL, i.e. twice as tall as wide
        assert got == fit(image, available, DEFAULT_CELL) == (30, 15)
        return
    assert got == box
    if box != (0, 0):
        assert aspect_error(image, got, use) <= TOLERANCE


@settings(max_examples=300, deadline=None)
@given(st.integers(8, 2048), st.integers(8, 2048), st.integers(1, 240), st.integers(1, 120),
       st.sampled_from([TEXT_CELL, DEFAULT_CELL, CellSize(8, 16), CellSize(9, 21), CellSize(7, 15),
                        CellSize(12, 24)]))
@example(9, 60, 32, 105, CellSize(1, 2))  # columns 31.5 rounded to 32: off by 0.5 / 31.5
def test_fit_is_the_largest_box_of_the_images_shape(width: int, height: int, columns: int, rows: int,
                                                   cell: CellSize) -> None:
    got = fit((width, height), (columns, rows), cell)
    assert 1 <= got[0] <= columns and 1 <= got[1] <= rows
    assert got[0] == columns or got[1] == rows  # as large as fits: it touches a side of the space
    if min(got) >= 10:  # whole cells: half a cell of rounding on a side of 10 or more. The rounded side n
        # came from an exact x >= n - 0.5, so the shape is off by at most 0.5 / (n - 0.5).
        assert aspect_error((width, height), got, cell) <= 0.5 / (min(got) - 0.5) + 1e-9 <= TOLERANCE


def test_arrange_picks_a_row_two_columns_or_a_column() -> None:
    squares = [(64, 64)] * 3
    wide = arrange(squares, (150, 20), TEXT_CELL)
    assert (wide.columns, wide.rows) == (3, 1) and wide.boxes == ((36, 18),) * 3
    pane = arrange(squares, (53, 28), TEXT_CELL)  # the explorer's right column at 140 x 44
    assert (pane.columns, pane.rows) == (2, 2) and pane.boxes[0] == (24, 12)
    tall = arrange(squares, (30, 90), TEXT_CELL)
    assert (tall.columns, tall.rows) == (1, 3) and tall.boxes[0] == (30, 15)
    for layout in (wide, pane, tall):  # the gutter and the captions fit in the area
        assert layout.columns * layout.space[0] + (layout.columns - 1) * 2 <= (150, 53, 30)[
            (wide, pane, tall).index(layout)]


def test_the_heat_image_maps_the_largest_difference_to_the_brightest_color() -> None:
    a = np.zeros((4, 6, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0] = (30, 60, 90)  # mean 60: the largest
    b[1, 1] = (30, 30, 30)  # mean 30: half way
    got = heat(Image.fromarray(a), Image.fromarray(b))
    assert got.peak == 60 and got.image.size == (6, 4)
    pixels = np.asarray(got.image)
    assert tuple(pixels[0, 0]) == colormap(1.0) and tuple(pixels[3, 5]) == colormap(0.0) == (0, 0, 4)
    assert tuple(pixels[1, 1]) == colormap(128 / 255)
    assert sum(colormap(1.0)) > sum(colormap(0.5)) > sum(colormap(0.0))  # brighter up the scale
    assert str(scale_text(60, 30)).startswith("0 ") and str(scale_text(60, 30)).endswith(" 60 of 255")
    assert "no difference" in str(scale_text(0, 30))
    same = heat(Image.fromarray(a), Image.fromarray(a))
    assert same.peak == 0 and not np.asarray(same.image)[..., :2].any()


def test_the_compare_keys_clash_with_no_other_key() -> None:
    others = [k for k in ALL_KEYS if k not in COMPARE_KEYS]
    taken = {key for k in others for key in k.keys.split(",")}
    mine = {key for k in COMPARE_KEYS for key in k.keys.split(",")}
    assert mine == {"A", "B"} and not mine & taken
    assert set(COMPARE_KEYS) <= set(ALL_KEYS)  # bindable and listed like every other key


# ------------------------------------------------------------------------------------ pane on its own


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def done_record(job: int, image: Image.Image | None, baseline: Image.Image | None, label: str = "",
                status: Status = Status.OK) -> RunRecord:
    record = RunRecord(job=job, label=label or f"plan {job}", started=f"12:00:{job:02d}", plan_text="",
                       prompt="p", status=status, image=image, baseline=baseline)
    if image is not None and baseline is not None and image.size == baseline.size:
        record.difference = difference(image, baseline)
    return record


class PaneApp(App[None]):
    def __init__(self, graphics: str) -> None:
        super().__init__()
        self.graphics = graphics

    def compose(self) -> ComposeResult:
        yield ImagePane(self.graphics, id="images")


async def settle(pilot: Pilot[Any]) -> None:
    """A resize or new content lays out twice (the pane sizes its pictures after its own resize)."""
    for _ in range(3):
        await pilot.pause()


def heat_shown(pane: ImagePane) -> bool:
    return pane.query_one(DifferenceSlot).image is not None


SIZES = [(60, 24), (100, 40), (160, 50), (44, 70)]
IMAGE_SIZES = [(64, 64), (128, 64), (1024, 1024)]


@pytest.mark.parametrize(("graphics", "reported"), [
    ("halfcell", None), ("unicode", (9, 19)), ("sixel", (8, 16)), ("tgp", (9, 21)), ("sixel", None),
    ("tgp", (0, 0)),
])
def test_pictures_keep_their_shape_apart_and_captioned_at_every_size(
        graphics: str, reported: tuple[int, int] | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_pane, "reported_cell_size", lambda: reported)
    app = PaneApp(graphics)
    seen: list[tuple[int, int, int]] = []

    async def main() -> None:
        async with app.run_test(size=SIZES[0]) as pilot:
            pane = app.query_one(ImagePane)
            assert tuple(pane.cell) == cell_pixels(graphics, reported)
            await settle(pilot)
            check_geometry(layout_of(pane), images=0)  # empty: boxes and captions only
            cases = list(itertools.product(IMAGE_SIZES, SIZES))
            if graphics != "halfcell":  # sixel encodes in Python: fewer, but still every layout
                cases = [((128, 64), SIZES[1]), ((1024, 1024), SIZES[2]), ((64, 64), SIZES[3])]
            for (w, h), size in cases:
                pane.show_record(done_record(1, noise(w, h, 1), noise(w, h, 2)))
                await pilot.resize_terminal(*size)
                await until(pilot, lambda: heat_shown(pane))
                await settle(pilot)
                layout = layout_of(pane)
                check_geometry(layout, images=3)
                assert [s["image"] for s in layout["slots"]] == [[w, h]] * 3
                assert "PSNR" in layout["line_text"]
                seen.append((w, h, len({s["picture"][1] for s in layout["slots"]})))

    asyncio.run(main())
    # the layouts differ with the space: all in a row, two columns, one column
    assert {rows for _, _, rows in seen} == ({1, 2, 3} if graphics == "halfcell" else {1, 2, 3} & {
        rows for _, _, rows in seen}) and len(seen) >= 3


def test_two_runs_of_different_sizes_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    app = PaneApp("halfcell")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one(ImagePane)
            wide = done_record(1, noise(128, 64, 1), noise(128, 64, 2), "wide")
            square = done_record(2, noise(64, 64, 3), noise(64, 64, 4), "square")
            pane.show_record(wide)
            pane.mark("A", wide)
            assert pane.shows(wide)  # one mark alone changes nothing
            pane.mark("B", square)
            await settle(pilot)
            layout = layout_of(pane)
            check_geometry(layout, images=2)
            first, second, apart = layout["slots"]
            assert first["image"] == [128, 64] and second["image"] == [64, 64] and apart["image"] is None
            assert first["title_text"] == "A · 12:00:01 wide" and second["title_text"] == "B · 12:00:02 square"
            assert "sizes differ (128×64 vs 64×64)" in layout["line_text"]

    asyncio.run(main())


# ----------------------------------------------------------------------------- the app, a scripted engine

TIMING = Timing(total=1.25, text_encode=0.1, text_encode_cached=False, transformer_steps=(0.5, 0.5), decode=0.1)
BASE_TIMING = Timing(total=2.5, text_encode=0.0, text_encode_cached=True, transformer_steps=(1.1, 1.1), decode=0.1)
BLOCK_RUNS = BlockRuns(full_per_step={"double": 4, "single": 8}, per_step=({"double": 4, "single": 4},) * 2,
                       total=16, full_total=24)


def png(image: Image.Image) -> bytes:
    return png_bytes(image, plans.Plan())


class ScriptedEngine(StubEngine):
    """The stub engine, but a run stays running until the test says what happens (`emit`); cancel ends
    the job in flight as the engine does (done, cancelled)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job: int | None = None

    async def submit(self, request: protocol.Run | protocol.Analyze) -> int:
        if isinstance(request, protocol.Run):
            assert self.runs is not None
            self.runs.append(request)
            self.job = request.job
            self.state = EngineState.BUSY
            return request.job
        return await super().submit(request)

    def emit(self, *events: protocol.Event) -> None:
        for event in events:
            if isinstance(event, protocol.Done):
                self.state = EngineState.READY
            self._events.put_nowait(event)

    async def cancel(self, job: int | None = None) -> None:
        if self.job is not None:
            self.emit(protocol.Done(job=self.job, status=Status.CANCELLED, seconds=0.5))


def progress(job: int, role: Role, step: int, image: Image.Image) -> protocol.Progress:
    return protocol.Progress(job=job, index=0, role=role, step=step, steps=4, elapsed=0.1 * step, preview=png(image))


def finished(job: int, role: Role, image: Image.Image) -> protocol.Image:
    return protocol.Image(job=job, index=0, role=role, prompt="p", cached=False, path=None,
                          settings=Settings(seed=0, steps=4, width=image.width, height=image.height, guidance=0.0,
                                            max_sequence_length=None),
                          timing=TIMING if role == Role.PLAN else BASE_TIMING, block_runs=BLOCK_RUNS, png=png(image))


class Explorer:
    """The app on tiny-flux with scripted engines (a new one per engine start)."""

    def __init__(self, tmp_path: Path) -> None:
        self.source = resolve("tiny-flux")
        self.runs: list[protocol.Run] = []
        self.engines: list[ScriptedEngine] = []
        self.app = ExplorerApp(self.source, graphics="halfcell", plans_dir=tmp_path / "plans",
                               runs_dir=tmp_path / "runs", engine_factory=self._engine)

    def _engine(self) -> ScriptedEngine:
        self.engines.append(ScriptedEngine(self.source, self.runs))
        return self.engines[-1]

    @property
    def engine(self) -> ScriptedEngine:
        return self.engines[-1]

    @property
    def pane(self) -> ImagePane:
        return self.app.query_one(ImagePane)

    def layout(self) -> dict[str, Any]:
        return layout_of(self.pane)

    def texts(self) -> str:
        """Every caption, the difference line and the timing: what could go stale."""
        layout = self.layout()
        parts = [s[k] for s in layout["slots"] for k in ("title_text", "detail_text")]
        return " | ".join([*parts, layout["line_text"], str(self.app.query_one("#timing", Static).render())])

    def images(self) -> list[Image.Image | None]:
        return [slot.image for slot in self.app.query(ImageSlot)] + [self.app.query_one(DifferenceSlot).image]

    async def ready(self, pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: bool(self.engines) and self.app.session.state == EngineState.READY
                    and self.app.session.similarity is not None)

    async def run(self, pilot: Pilot[Any]) -> int:
        count = len(self.runs)
        await self.app.run_action("run")  # enter, in whichever view has the focus
        await until(pilot, lambda: len(self.runs) == count + 1 and self.runs[-1].job in self.app.session.records)
        await settle(pilot)
        return self.runs[-1].job

    async def complete(self, pilot: Pilot[Any], job: int, plan: Image.Image, baseline: Image.Image) -> None:
        self.engine.emit(progress(job, Role.PLAN, 1, plan.resize((8, 8))), finished(job, Role.PLAN, plan),
                         finished(job, Role.BASELINE, baseline), protocol.Done(job=job, status=Status.OK, seconds=4))
        record = self.app.session.records[job]
        await until(pilot, lambda: record.status == Status.OK and record.difference is not None
                    and heat_shown(self.pane))
        await settle(pilot)


def drive(explorer: Explorer, scenario: Callable[[Pilot[Any]], Coroutine[Any, Any, None]],
          size: tuple[int, int] = (140, 44)) -> None:
    async def main() -> None:
        async with explorer.app.run_test(size=size) as pilot:
            await explorer.ready(pilot)
            if size[0] < explorer.app.WIDE:  # one view at a time: the images
                explorer.app.action_show_view("images")
                await settle(pilot)
            await scenario(pilot)

    asyncio.run(main())


def assert_fresh(explorer: Explorer, old: RunRecord, *, images: set[int]) -> None:
    """Nothing of `old` is on screen: none of its images (`images`: ids of what it showed; its baseline may
    show as the baseline of the same prompt and settings, said so) and none of its captions, numbers or
    timing."""
    layout = explorer.layout()
    shown = explorer.images()
    if old.baseline is not None and shown[1] is old.baseline:
        assert layout["slots"][1]["title_text"] == f"baseline · from {old.started}"
        assert layout["slots"][1]["detail_text"] == "same prompt and settings"
        shown = [shown[0], None, shown[2]]
    assert not {id(i) for i in shown if i is not None} & images
    text = explorer.texts()
    assert old.label not in text and "PSNR" not in text and "total" not in text, text


@pytest.mark.parametrize("size", [(100, 36), (140, 44), (200, 60)])
def test_a_new_plans_run_a_cancel_and_a_restart_leave_nothing_stale(tmp_path: Path,
                                                                    size: tuple[int, int]) -> None:
    explorer = Explorer(tmp_path)
    app = explorer.app

    async def scenario(pilot: Pilot[Any]) -> None:
        # 1. A run of the full model, to its end: both images, the heat, the numbers, the timing.
        job = await explorer.run(pilot)
        first = app.session.records[job]
        assert explorer.texts().startswith("plan · full model | running… | baseline (identity plan) | "
                                           "after the plan")
        assert "running — timing when its image is in" in explorer.texts()
        plan_image, base_image = noise(64, 64, 1), noise(64, 64, 2)
        await explorer.complete(pilot, job, plan_image, base_image)
        layout = explorer.layout()
        check_geometry(layout, images=3)
        assert [s["title_text"] for s in layout["slots"]] == [
            "plan · full model", "baseline (identity plan)", "|plan − baseline|"]
        assert layout["slots"][0]["detail_text"] == "64×64 · 1250 ms"
        assert layout["slots"][2]["detail_text"].startswith("0 ") and "of 255" in layout["slots"][2]["detail_text"]
        assert "plan vs baseline: PSNR" in layout["line_text"] and "total 1250 ms" in explorer.texts()
        shown = {id(i) for i in explorer.images() if i is not None}

        # 2. The plan changes and runs (same prompt and settings): its first preview is never next to the
        # first run's captions, numbers or timing; the baseline slot shows the first run's baseline, which
        # is this run's too, and says where it comes from.
        app.set_plan(plans.Plan(orders=(("single", (1, 2, 3, 4, 5, 6, 7)),)))
        job = await explorer.run(pilot)
        second = app.session.records[job]
        assert_fresh(explorer, first, images=shown)
        assert explorer.images() == [None, first.baseline, None]
        explorer.engine.emit(progress(job, Role.PLAN, 1, noise(8, 8, 5)))
        await until(pilot, lambda: explorer.images()[0] is not None)
        await settle(pilot)
        layout = explorer.layout()
        check_geometry(layout, images=2)
        assert layout["slots"][0]["title_text"] == "plan · step 1/4 (preview)"
        assert layout["slots"][0]["detail_text"] == second.label == "single: 1-7"
        assert layout["slots"][1]["title_text"] == f"baseline · from {first.started}"
        assert layout["line_text"] == "plan vs baseline: when both images are in"
        assert layout["slots"][2]["title_text"] == "difference" and layout["slots"][2]["detail_text"] == ""
        assert_fresh(explorer, first, images=shown)

        # 3. Cancelled: the captions say so, and still nothing of the first run.
        await app.run_action("cancel")
        await until(pilot, lambda: second.status == Status.CANCELLED)
        await settle(pilot)
        layout = explorer.layout()
        check_geometry(layout, images=2)
        assert layout["slots"][0]["title_text"] == "plan · cancelled at step 1/4 (preview)"
        assert layout["line_text"] == "run cancelled: no difference"
        assert f"{second.label}: run cancelled — no timing" in explorer.texts()
        assert_fresh(explorer, first, images=shown)
        explorer.engine.emit(progress(job, Role.PLAN, 2, noise(8, 8, 6)))  # a preview that outlived its run
        await settle(pilot)
        assert explorer.layout()["slots"][0]["title_text"] == "plan · cancelled at step 1/4 (preview)"

        # 4. Another prompt (no baseline of it yet), under an engine that restarts mid-run: the run ends,
        # and says so.
        app.query_one(SamplingForm).set_prompt("a red fox in the snow")
        job = await explorer.run(pilot)
        third = app.session.records[job]
        assert explorer.images() == [None, None, None]
        assert explorer.layout()["slots"][1]["detail_text"] == "after the plan"
        explorer.engine.emit(progress(job, Role.PLAN, 3, noise(8, 8, 7)), finished(job, Role.PLAN, noise(64, 64, 8)),
                             progress(job, Role.BASELINE, 1, noise(8, 8, 9)))
        await until(pilot, lambda: third.image is not None and explorer.layout()["slots"][1]["title_text"]
                    == "baseline · step 1/4 (preview)")
        engines = len(explorer.engines)
        await app.run_action("restart_engine")
        await until(pilot, lambda: len(explorer.engines) == engines + 1 and third.status == Status.CANCELLED)
        await explorer.ready(pilot)
        await settle(pilot)
        layout = explorer.layout()
        check_geometry(layout, images=2)
        assert layout["slots"][0]["title_text"] == f"plan · {third.label}"  # its own image, its own caption
        assert layout["slots"][1]["title_text"] == "baseline · cancelled at step 1/4 (preview)"
        assert layout["slots"][2]["image"] is None and layout["line_text"] == "run cancelled: no difference"
        assert "total 1250 ms" in explorer.texts()  # the plan's own timing (its image came)

        # 5. After the restart, a run of another plan starts clean again.
        shown = {id(i) for i in explorer.images() if i is not None}
        app.set_plan(plans.Plan())
        job = await explorer.run(pilot)
        assert_fresh(explorer, third, images=shown)
        assert explorer.images() == [None, None, None]
        await explorer.complete(pilot, job, noise(64, 64, 10), noise(64, 64, 11))
        check_geometry(explorer.layout(), images=3)

    drive(explorer, scenario, size)


def test_any_two_runs_of_the_history_side_by_side(tmp_path: Path) -> None:
    explorer = Explorer(tmp_path)
    app = explorer.app

    async def scenario(pilot: Pilot[Any]) -> None:
        images = [noise(64, 64, 20), noise(64, 64, 21), noise(128, 64, 22)]
        jobs = []
        for i, image in enumerate(images):
            app.set_plan(plans.Plan(orders=(("single", tuple(range(i, 8))),)))  # another plan each time
            jobs.append(await explorer.run(pilot))
            await explorer.complete(pilot, jobs[-1], image, image if i == 0 else noise(*image.size, 30 + i))
        records = [app.session.records[job] for job in jobs]
        history = app.query_one("#history")
        history.highlighted = 0  # type: ignore[attr-defined]
        await pilot.press("A")
        await settle(pilot)
        assert explorer.pane.marks == {"A": records[0]} and explorer.pane.shows(records[2])
        history.highlighted = 1  # type: ignore[attr-defined]
        await pilot.press("B")
        await until(pilot, lambda: heat_shown(explorer.pane) and "A vs B" in explorer.layout()["line_text"])
        await settle(pilot)
        layout = explorer.layout()
        check_geometry(layout, images=3)
        a, b, apart = layout["slots"]
        assert a["title_text"] == f"A · {records[0].started} {records[0].label}"
        assert b["title_text"] == f"B · {records[1].started} {records[1].label}"
        assert apart["title_text"] == "|A − B|" and "of 255" in apart["detail_text"]
        shown = [np.asarray(slot.image) for slot in app.query(ImageSlot)]
        assert all(np.array_equal(got, np.asarray(want)) for got, want in zip(shown, images[:2], strict=True))
        expected = difference(images[0], images[1])
        assert layout["line_text"] == f"A vs B: PSNR {expected.psnr:.1f} dB · MAD {expected.mad:.1f}"
        # the heat is |A − B|, not the runs' own plan-vs-baseline (run 0's is identical: all black)
        assert np.asarray(explorer.pane.query_one(DifferenceSlot).image).max() > 200

        # B is now the 128x64 run: no difference image, and it says why.
        history.highlighted = 2  # type: ignore[attr-defined]
        await pilot.press("B")
        await settle(pilot)
        layout = explorer.layout()
        check_geometry(layout, images=2)
        assert layout["slots"][1]["image"] == [128, 64] and layout["slots"][2]["image"] is None
        assert layout["line_text"] == "A vs B: sizes differ (64×64 vs 128×64)"

        # Choosing a run in the history shows its plan and baseline again.
        history.highlighted = 0  # type: ignore[attr-defined]
        history.action_select()  # type: ignore[attr-defined]
        await until(pilot, lambda: explorer.pane.shows(records[0]))
        await settle(pilot)
        assert explorer.layout()["line_text"] == "baseline is identical to plan"

    drive(explorer, scenario)


def test_opening_a_dit_explore_png_shows_its_image_and_its_runs_baseline(tmp_path: Path) -> None:
    explorer = Explorer(tmp_path)
    app = explorer.app
    folder = tmp_path / "runs" / "20260101-120000-001-skip"
    folder.mkdir(parents=True)
    plan = plans.Plan(orders=(("single", (0, 1, 2, 3)),), model="tiny-flux")
    image, baseline = noise(128, 64, 40), noise(128, 64, 41)
    (folder / "000.png").write_bytes(png_bytes(image, plan))
    (folder / "baseline-000.png").write_bytes(png_bytes(baseline, plans.Plan(model="tiny-flux")))
    alone = tmp_path / "alone.png"
    alone.write_bytes(png_bytes(noise(64, 64, 42), plan))

    async def scenario(pilot: Pilot[Any]) -> None:
        app._open(str(folder / "000.png"))
        await until(pilot, lambda: heat_shown(explorer.pane))
        await settle(pilot)
        assert app.plan.order("single") == (0, 1, 2, 3)  # the plan is loaded too
        layout = explorer.layout()
        check_geometry(layout, images=3)
        first, second, _ = layout["slots"]
        assert first["title_text"] == "000.png" and first["image"] == [128, 64]
        assert first["detail_text"] == f"128×64 · {folder.name}"
        assert second["title_text"] == "baseline-000.png"
        assert np.array_equal(np.asarray(explorer.images()[0]), np.asarray(image))
        assert "000.png vs baseline-000.png: PSNR" in layout["line_text"]

        app._open(str(alone))
        await settle(pilot)
        layout = explorer.layout()
        check_geometry(layout, images=1)
        assert layout["slots"][0]["title_text"] == "alone.png" and layout["slots"][1]["image"] is None
        assert layout["slots"][1]["detail_text"] == "no baseline-alone.png next to it"
        assert "PSNR" not in layout["line_text"]

        # a new run replaces the file's image and captions
        await explorer.run(pilot)
        assert "alone.png" not in explorer.texts() and explorer.images() == [None, None, None]

    drive(explorer, scenario)


def test_the_app_binds_the_compare_keys() -> None:
    keys = {binding.key for binding in app_module.ExplorerApp.BINDINGS if not isinstance(binding, tuple)}
    assert {"A", "B"} <= keys


def test_check_geometry_catches_what_it_should() -> None:
    """The checker itself: a stretched picture, touching pictures and a caption on a picture fail."""
    a: dict[str, Any] = {"id": "a", "image": [64, 64], "picture": [0, 1, 30, 15], "title": [0, 0, 30, 1],
                         "detail": [0, 16, 30, 1], "title_text": "", "detail_text": ""}
    b: dict[str, Any] = {"id": "b", "image": [64, 64], "picture": [32, 1, 30, 15], "title": [32, 0, 30, 1],
                         "detail": [32, 16, 30, 1], "title_text": "", "detail_text": ""}
    good: dict[str, Any] = {"cell": [1, 2], "pane": [0, 0, 100, 40], "line": [0, 39, 100, 1], "line_text": "",
                            "slots": [a, b]}
    check_geometry(good, images=2)
    stretched = {**good, "slots": [{**a, "picture": [0, 1, 30, 30], "detail": [0, 31, 30, 1]}, b]}
    touching = {**good, "slots": [a, {**b, "picture": [30, 1, 30, 15], "title": [30, 0, 30, 1],
                                      "detail": [30, 16, 30, 1]}]}
    covered = {**good, "slots": [{**a, "title": [0, 1, 30, 1]}, b]}
    for bad in (stretched, touching, covered):
        with pytest.raises(AssertionError):
            check_geometry(bad, images=2)
    assert math.isclose(aspect_error((64, 64), (30, 15), TEXT_CELL), 0.0)


def test_stepping_through_a_runs_previews_shows_plan_and_baseline_at_the_same_step() -> None:
    """`[` / `]` (step_through): the plan's and the baseline's previews after the same step, side by side
    with their difference; past the last step the final images again. A later run whose baseline the
    engine reused borrows the first run's baseline previews (said so); an identity run's plan previews
    are its baseline's. A run of more than KEPT_STEPS steps keeps a spread of them."""
    app = PaneApp("halfcell")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one(ImagePane)
            assert pane.step_through(-1) == "per-step previews: show a run's images first"
            first = done_record(1, None, None, "skip 3")
            first.status = Status.RUNNING
            pane.start_run(first)
            plan_steps = {k: noise(16, 16, 10 + k) for k in range(1, 4)}
            base_steps = {k: noise(16, 16, 20 + k) for k in range(1, 4)}
            for k in range(1, 4):
                pane.show_preview(plan_steps[k], "plan", k, 4, job=1)
            for k in range(1, 4):
                pane.show_preview(base_steps[k], "baseline", k, 4, job=1)
            first.image, first.baseline, first.status = noise(64, 64, 1), noise(64, 64, 2), Status.OK
            first.difference = difference(first.image, first.baseline)
            pane.refresh_record(first)
            assert pane.step_through(-1) == "step 3/4: plan and baseline previews ([ ] step)"
            assert pane.step_through(-1) == "step 2/4: plan and baseline previews ([ ] step)"
            await until(pilot, lambda: heat_shown(pane))
            await settle(pilot)
            layout = layout_of(pane)
            assert [s["title_text"] for s in layout["slots"][:2]] == ["plan · step 2/4 (preview)",
                                                                     "baseline · step 2/4 (preview)"]
            assert [s["image"] for s in layout["slots"]] == [[16, 16]] * 3
            assert pane.query_one("#plan-image", ImageSlot).image is plan_steps[2]
            assert pane.query_one("#baseline-image", ImageSlot).image is base_steps[2]
            want = difference(plan_steps[2], base_steps[2])
            assert f"PSNR {want.psnr:.1f} dB" in layout["line_text"]
            assert pane.step_through(-5) == "step 1/4: plan and baseline previews ([ ] step)"  # stops at the first
            assert pane.step_through(1) == "step 2/4: plan and baseline previews ([ ] step)"
            pane.step_through(1)
            assert pane.step_through(1) == "the final images"
            await settle(pilot)
            assert layout_of(pane)["slots"][0]["image"] == [64, 64]

            second = done_record(2, None, None, "skip 4")  # same prompt and settings: the baseline was cached
            second.status = Status.RUNNING
            pane.start_run(second)
            for k in range(1, 4):
                pane.show_preview(noise(16, 16, 30 + k), "plan", k, 4, job=2)
            second.image, second.baseline, second.status = noise(64, 64, 3), first.baseline, Status.OK
            pane.refresh_record(second)
            pane.step_through(1)
            await settle(pilot)
            slots = layout_of(pane)["slots"]
            assert slots[1]["detail_text"] == "from 12:00:01: same prompt and settings"
            assert pane.query_one("#baseline-image", ImageSlot).image is base_steps[1]

            identity = done_record(3, None, None, "full model")
            identity.prompt = "another"
            identity.status = Status.RUNNING
            pane.start_run(identity)
            for k in range(1, 100):
                pane.show_preview(noise(8, 8, k), "plan", k, 100, job=3)
            final = noise(64, 64, 9)
            identity.image, identity.baseline, identity.status = final, final, Status.OK
            pane.refresh_record(identity)
            assert pane.step_through(-1) == "step 99/100: plan and baseline previews ([ ] step)"
            await settle(pilot)
            assert pane.query_one("#baseline-image", ImageSlot).image is pane.query_one("#plan-image", ImageSlot).image
            kept = sorted(pane._state.stepped[3]["plan"])
            assert kept == [*range(2, 100, 2), 99] and len(kept) <= image_pane.KEPT_STEPS

    asyncio.run(main())
