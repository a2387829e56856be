"""Two images side by side and their difference, captioned: a run's plan and baseline, two runs of the
history (A/B), or a PNG opened from disk.

What the pane shows is one *view* at a time, and every caption and number on it is derived from that
view's record(s) when it is drawn, so none can outlive the images they describe:

- a run: its plan image and its baseline. While it runs, the slots show its live previews
  ("plan · step 2/4 (preview)") or what they wait for; until its own baseline comes, the baseline slot
  shows the baseline of an earlier run of the same prompt and settings (said so), else nothing: never
  another prompt's. A run that ended without an image says how it ended ("cancelled at step 2/4").
  `step_through` (`[` and `]`) shows the run's plan and baseline previews after one denoising step side
  by side, with their difference (the previews of the last KEPT_RUNS runs are kept).
- two runs of the history (A/B, marked with tui/keys.py's COMPARE_KEYS): their plan images, labeled with their
  start time and label.
- a PNG written by dit-explore (ctrl+o): the image, captioned with its file name, and the `baseline-`
  PNG of the same run folder when it lies next to it.
- a sweep's figure (its plot or its contact sheet), alone: one picture as large as the pane allows,
  captioned with what it is and its folder. `cycle_sweep` steps through the sweep's figures and back to
  the view shown before them.

The third slot is |first − second| as a heat image (the mean absolute difference over RGB per pixel,
through the inferno colormap, black = equal) with its scale: the brightest color is the largest
difference, said in 0-255 units. It is computed once per pair of images, in a thread, and cached.

Pictures keep their shape for every renderer (tui/widgets/image_geometry.py), with a gutter between
them and their captions in rows of their own. Images are scaled to their box's pixel size once per
size before being handed to textual-image, so redraws never resample a full 1024x1024 image.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Center, Grid, Vertical
from textual.widget import Widget
from textual.widgets import Static

from dit_explore.engine.core.protocol import Status
from dit_explore.tui.metrics import Difference, difference
from dit_explore.tui.session import RunRecord
from dit_explore.tui.widgets.image_geometry import CellSize, arrange, cell_pixels

# Inferno, from black (no difference) to pale yellow (the largest one).
INFERNO = ("#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06", "#f7d13d",
           "#fcffa4")
COMPARED_CACHE = 8  # pairs of images whose heat image is kept


# ---------------------------------------------------------------------------------------- renderers


def renderer(graphics: str) -> str:
    """The protocol a --graphics choice draws with ("auto": what textual-image detected at import)."""
    if graphics != "auto":
        return graphics
    import textual_image.renderable as renderables

    detected = {renderables.SixelImage: "sixel", renderables.TGPImage: "tgp",
                renderables.HalfcellImage: "halfcell", renderables.UnicodeImage: "unicode"}
    return detected.get(renderables.Image, "halfcell")


def image_widget_class(graphics: str) -> type[Widget]:
    """The textual-image widget for a protocol. `textual_image.widget` must have been imported before
    the app started (it probes the terminal once); the CLI does that."""
    import textual_image.widget as tiw

    return {
        "auto": tiw.Image,
        "tgp": tiw.TGPImage,
        "sixel": tiw.SixelImage,
        "halfcell": tiw.HalfcellImage,
        "unicode": tiw.UnicodeImage,
    }[graphics]


def reported_cell_size() -> tuple[int, int] | None:
    """The terminal's cell size in pixels as textual-image found it (asked once, before the app took the
    terminal; 10 x 20 when the terminal did not say); None when it cannot be had at all."""
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return int(size.width), int(size.height)
    except Exception:  # noqa: BLE001 - a private helper of textual-image, or no stdout: the caller falls back
        return None


# ------------------------------------------------------------------------------------------ the heat


@cache
def _lut() -> np.ndarray:
    anchors = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in INFERNO], dtype=np.float64)
    where = np.linspace(0, 1, len(anchors))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, where, anchors[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


def colormap(t: float) -> tuple[int, int, int]:
    """The heat color of a fraction t of the scale (0: black, no difference; 1: the largest one)."""
    r, g, b = _lut()[round(min(1.0, max(0.0, t)) * 255)]
    return int(r), int(g), int(b)


@dataclass(frozen=True)
class Heat:
    image: Image.Image  # RGB, the size of the compared images
    peak: float  # the brightest color: the largest per-pixel mean |a − b| over RGB, on the 0-255 scale


def heat(a: Image.Image, b: Image.Image) -> Heat:
    """|a − b| per pixel (the mean over RGB), scaled so the largest difference is the brightest color."""
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {a.size} vs {b.size}")
    apart = np.abs(x - y).mean(axis=2)
    peak = float(apart.max()) if apart.size else 0.0
    index = np.zeros(apart.shape, dtype=np.uint8) if peak == 0 else np.rint(apart / peak * 255).astype(np.uint8)
    return Heat(Image.fromarray(_lut()[index], "RGB"), peak)


def scale_text(peak: float, width: int) -> Text:
    """The heat image's scale in at most `width` cells: "0 ▮▮▮▮▮▮ 37 of 255"."""
    if peak == 0:
        return Text("no difference: 0 everywhere")
    top = f" {peak:.0f} of 255" if peak >= 10 else f" {peak:.1f} of 255"
    bar = max(3, min(16, width - len(top) - 2))
    text = Text("0 ")
    for i in range(bar):
        text.append("█", style="#{:02x}{:02x}{:02x}".format(*colormap(i / (bar - 1))))
    text.append(top)
    return text


@dataclass(frozen=True)
class Compared:
    """Two images compared: their heat and difference, or why they cannot be (`problem`)."""

    heat: Heat | None
    difference: Difference | None
    problem: str = ""


def compare(a: Image.Image, b: Image.Image) -> Compared:
    if a.size != b.size:
        return Compared(None, None, f"sizes differ ({a.width}×{a.height} vs {b.width}×{b.height})")
    return Compared(heat(a, b), difference(a, b))


# ---------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class Preview:
    """A live preview of the running record (latent-sized)."""

    image: Image.Image
    step: int
    steps: int


@dataclass(frozen=True)
class Shown:
    """One slot: its image (None: empty) and its two caption lines."""

    image: Image.Image | None
    title: str
    detail: str = ""


@dataclass(frozen=True)
class Comparison:
    """What the two image slots show and what the difference slot and line may say about them."""

    first: Shown
    second: Shown
    names: tuple[str, str]  # "plan", "baseline" / "A", "B"
    comparable: bool  # both are final images: the difference slot compares them
    difference: Difference | None = None  # already known (the session's, for a run)
    why_not: str = ""  # when not comparable: what the difference line says


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _size(image: Image.Image) -> str:
    return f"{image.width}×{image.height}"


def _ended(record: RunRecord) -> str:
    return f"run {record.status}"


def same_baseline(record: RunRecord, runs: Iterable[RunRecord]) -> RunRecord | None:
    """The latest other run with a baseline image of the same prompt and settings (the same baseline:
    the engine's is deterministic, and cached by exactly these)."""
    found = None
    for run in runs:
        if (run is not record and run.baseline is not None and run.prompt == record.prompt
                and run.sampling == record.sampling):
            found = run
    return found


def describe_record(record: RunRecord, previews: Mapping[str, Preview], reused: RunRecord | None = None) -> Comparison:
    """A run's plan and baseline, at any point of its life: running (with its live previews), done, or
    ended without an image (cancelled, superseded, crashed, failed). Until its own baseline comes, the
    baseline slot shows `reused`'s (a run of the same prompt and settings), said so, or stays empty."""
    running = record.status == Status.RUNNING

    def slot(role: str, title: str, image: Image.Image | None, seconds: float | None, waiting: str) -> Shown:
        if image is not None:
            detail = _size(image) + (f" · {_seconds(seconds)}" if seconds is not None else "")
            return Shown(image, title, detail)
        preview = previews.get(role)
        if preview is not None:
            when = f"step {preview.step}/{preview.steps} (preview)"
            return Shown(preview.image, f"{role} · {when}" if running else f"{role} · {record.status} at {when}",
                         record.label if role == "plan" else "identity plan")
        if role == "baseline" and reused is not None and reused.baseline is not None:
            return Shown(reused.baseline, f"baseline · from {reused.started}", "same prompt and settings")
        if running:
            return Shown(None, title, waiting)
        return Shown(None, title, f"{_ended(record)}: no image" if record.status != Status.OK else "not computed")

    plan = slot("plan", f"plan · {record.label}", record.image,
                record.timing.total if record.timing is not None else None, "running…")
    baseline = slot("baseline", "baseline (identity plan)", record.baseline,
                    record.baseline_timing.total if record.baseline_timing is not None else None,
                    "after the plan" if record.image is None else "running…")
    comparable = record.image is not None and record.baseline is not None
    if comparable:
        why = ""
    elif running:
        why = "plan vs baseline: when both images are in"
    elif record.status != Status.OK:
        why = f"{_ended(record)}: no difference"
    else:
        why = "baseline not computed"
    return Comparison(plan, baseline, ("plan", "baseline"), comparable, record.difference, why)


def describe_pair(a: RunRecord, b: RunRecord) -> Comparison:
    """Two runs of the history, A and B: their plan images."""

    def slot(mark: str, record: RunRecord) -> Shown:
        title = f"{mark} · {record.started} {record.label}"
        if record.image is None:
            return Shown(None, title, "running…" if record.status == Status.RUNNING else f"{_ended(record)}: no image")
        seconds = f" · {_seconds(record.timing.total)}" if record.timing is not None else ""
        return Shown(record.image, title, _size(record.image) + seconds)

    first, second = slot("A", a), slot("B", b)
    missing = [mark for mark, record in (("A", a), ("B", b)) if record.image is None]
    why = f"A vs B: {' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no image" if missing else ""
    return Comparison(first, second, ("A", "B"), not missing, None, why)


@dataclass(frozen=True)
class FileView:
    """A PNG opened from disk, and the baseline PNG of its run folder when there is one."""

    path: Path
    image: Image.Image | None
    baseline_path: Path | None = None
    baseline: Image.Image | None = None
    problem: str = ""


def open_file(path: Path) -> FileView:
    """Read a dit-explore PNG and its run folder's baseline (`baseline-000.png` next to `000.png`)."""

    def read(p: Path) -> Image.Image:
        with Image.open(p) as image:
            image.load()
            return image.copy()

    try:
        image = read(path)
    except (OSError, ValueError) as exc:
        return FileView(path, None, problem=f"cannot read {path.name}: {exc}")
    sibling = path.with_name(f"baseline-{path.name}")
    if path.name.startswith("baseline-") or not sibling.is_file():
        return FileView(path, image)
    try:
        return FileView(path, image, sibling, read(sibling))
    except (OSError, ValueError) as exc:
        return FileView(path, image, sibling, None, f"cannot read {sibling.name}: {exc}")


def describe_file(view: FileView) -> Comparison:
    folder = view.path.parent.name
    if view.image is not None:
        first = Shown(view.image, view.path.name, f"{_size(view.image)} · {folder}")
    else:
        first = Shown(None, view.path.name, view.problem)
    if view.baseline is not None and view.baseline_path is not None:
        second = Shown(view.baseline, view.baseline_path.name, f"{_size(view.baseline)} · {folder}")
    elif view.baseline_path is not None:
        second = Shown(None, view.baseline_path.name, view.problem)
    elif view.path.name.startswith("baseline-"):
        second = Shown(None, "baseline", "the file opened is a baseline")
    else:
        second = Shown(None, "baseline", f"no baseline-{view.path.name} next to it")
    names = (view.path.name, view.baseline_path.name if view.baseline_path is not None else "baseline")
    comparable = view.image is not None and view.baseline is not None
    why = "" if comparable else (view.problem or "nothing to compare it with")
    return Comparison(first, second, names, comparable, None, why)


@dataclass(frozen=True)
class SweepImage:
    """One figure of a sweep (its plot, its contact sheet), shown alone."""

    path: Path
    title: str  # what it is: "plot", "contact sheet"
    image: Image.Image | None
    problem: str = ""


def open_sweep_image(path: Path, title: str) -> SweepImage:
    try:
        with Image.open(path) as image:
            image.load()
            return SweepImage(path, title, image.copy())
    except (OSError, ValueError) as exc:
        return SweepImage(path, title, None, f"cannot read {path.name}: {exc}")


def difference_line(names: tuple[str, str], apart: Difference) -> str:
    first, second = names
    if math.isinf(apart.psnr):
        return f"{second} is identical to {first}"
    return f"{first} vs {second}: PSNR {apart.psnr:.1f} dB · MAD {apart.mad:.1f}"


# ------------------------------------------------------------------------------------------ widgets


def _scaled(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image at exactly `size` pixels: enlarged without inventing detail (nearest), reduced with
    Lanczos."""
    if image.size == size:
        return image
    image = image.convert("RGB")
    enlarge = size[0] >= image.width and size[1] >= image.height
    return image.resize(size, Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)


class PictureSlot(Vertical):
    """One picture with a title row above it and a detail row under it; the picture is drawn in the box
    the pane gives it (whole cells of the image's shape), centered in the slot."""

    DEFAULT_CSS = """
    PictureSlot {
        width: 1fr;
        height: 1fr;
    }
    PictureSlot > Center {
        width: 1fr;
        height: auto;
    }
    PictureSlot > .title, PictureSlot > .detail {
        width: 1fr;
        height: 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        text-align: center;
    }
    PictureSlot > .title {
        text-style: bold;
    }
    PictureSlot > .detail {
        color: $text-muted;
    }
    PictureSlot .picture {
        width: 1;
        height: 1;
        background: $panel;  /* an empty slot shows its box */
    }
    """

    def __init__(self, title: str, graphics: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._graphics = graphics
        self.shown = Shown(None, title)
        self.box = (0, 0)
        self.cell = CellSize(1, 2)
        self._scaled: tuple[Image.Image, tuple[int, int], Image.Image] | None = None
        self._sized = (0, 0)  # the picture widget's size in cells, as last set

    @property
    def image(self) -> Image.Image | None:
        """The full image shown (None: the slot is empty)."""
        return self.shown.image

    def compose(self) -> ComposeResult:
        yield Static(Text(self.shown.title), classes="title")
        with Center():
            yield image_widget_class(self._graphics)(classes="picture")
        yield Static(self._detail(), classes="detail")

    def _detail(self) -> Text:
        return Text(self.shown.detail)

    def show(self, shown: Shown) -> None:
        self.shown = shown
        if self.is_mounted:
            self.query_one(".title", Static).update(Text(shown.title))
            self.query_one(".detail", Static).update(self._detail())
            self._draw()

    def place(self, box: tuple[int, int], cell: CellSize) -> None:
        if (box, cell) != (self.box, self.cell):
            self.box, self.cell = box, cell
            self._draw()

    def _draw(self) -> None:
        picture = self.query_one(".picture")
        columns, rows = self.box
        picture.display = columns > 0 and rows > 0
        if not picture.display:
            return
        if self._sized != (columns, rows):
            self._sized = (columns, rows)
            picture.styles.width = columns
            picture.styles.height = rows
        image = self.shown.image
        if image is not None:
            target = (columns * self.cell.width, rows * self.cell.height)
            if self._scaled is None or self._scaled[0] is not image or self._scaled[1] != target:
                self._scaled = (image, target, _scaled(image, target))
            image = self._scaled[2]
        if picture.image is not image:  # type: ignore[attr-defined]
            picture.image = image  # type: ignore[attr-defined]


class ImageSlot(PictureSlot):
    """The slot of an image: a plan, a baseline, A or B, an opened file."""


class DifferenceSlot(PictureSlot):
    """The heat image of the two images, with its scale in the detail row."""

    def __init__(self, graphics: str, *, id: str | None = None) -> None:
        super().__init__("difference", graphics, id=id)
        self.peak: float | None = None

    def show_heat(self, shown: Shown, peak: float | None) -> None:
        self.peak = peak
        self.show(shown)

    def _detail(self) -> Text:
        if self.peak is None:
            return Text(self.shown.detail)
        return scale_text(self.peak, self.size.width or 24)

    def on_resize(self) -> None:
        if self.peak is not None:
            self.query_one(".detail", Static).update(self._detail())


KEPT_STEPS = 64  # previews kept per run and role for stepping through: every step up to this many, else spread
KEPT_RUNS = 8  # runs whose per-step previews are kept (latent-sized images: about 50 KB each at 1024 px)


def kept_step(step: int, steps: int) -> bool:
    """Whether the preview after `step` of `steps` is kept for stepping through (all of them up to
    KEPT_STEPS steps; beyond, evenly spread ones and the last preview)."""
    stride = -(-steps // KEPT_STEPS)
    return step % stride == 0 or step == steps - 1


def describe_step(record: RunRecord, step: int, steps: int, plan: Preview, baseline: Preview | None,
                  borrowed: RunRecord | None) -> Comparison:
    """A run's plan and baseline previews after the same denoising step (`[` and `]`), compared like the
    final images; a baseline whose previews came from an earlier run of the same prompt and settings
    says so, and a baseline without previews (cached by the engine) is said to have none."""
    when = f"step {step}/{steps} (preview)"
    first = Shown(plan.image, f"plan · {when}", f"{record.label} · [ ] step, ] after the last: final")
    if baseline is None:
        second = Shown(None, f"baseline · {when}", "no previews (the engine reused a cached baseline)")
    else:
        second = Shown(baseline.image, f"baseline · {when}",
                       f"from {borrowed.started}: same prompt and settings" if borrowed is not None else "identity plan")
    comparable = baseline is not None and baseline.image.size == plan.image.size
    return Comparison(first, second, ("plan", "baseline"), comparable, None,
                      "" if comparable else f"step {step}: the baseline has no preview")


@dataclass
class _State:
    live: RunRecord | None = None  # the latest run: previews belong to it
    previews: dict[str, Preview] = field(default_factory=dict)
    # Per run (job) and role, the previews kept after each step (kept_step), for stepping through.
    stepped: OrderedDict[int, dict[str, dict[int, Preview]]] = field(default_factory=OrderedDict)
    stepping: tuple[RunRecord, int] | None = None  # the run shown at a step (else its final images)
    view: RunRecord | tuple[RunRecord, RunRecord] | FileView | SweepImage | None = None
    marks: dict[str, RunRecord] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)  # every run shown: baselines to reuse
    figures: list[tuple[str, Path]] = field(default_factory=list)  # the last sweep's figures (title, file)
    before: RunRecord | tuple[RunRecord, RunRecord] | FileView | None = None  # the view before the figures


class ImagePane(Vertical):
    """The image slots (first, second, their difference) and the line with their PSNR."""

    DEFAULT_CSS = """
    ImagePane {
        height: 1fr;
        padding: 0 1;
    }
    ImagePane > #pictures {
        layout: grid;
        grid-size: 3 1;
        grid-columns: 1fr;
        grid-rows: 1fr;
        grid-gutter: 0 2;
        height: 1fr;
    }
    ImagePane > #difference {
        height: 1;
        width: 1fr;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        text-align: center;
    }
    """

    def __init__(self, graphics: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._graphics = graphics
        drawn_with = renderer(graphics)
        # Only sixel and tgp need the terminal's cell size (asked once, before the app took the terminal).
        self.cell = cell_pixels(drawn_with, reported_cell_size() if drawn_with in ("sixel", "tgp") else None)
        self._state = _State()
        self._compared: OrderedDict[tuple[int, int], tuple[Image.Image, Image.Image, Compared]] = OrderedDict()
        self._comparing: set[tuple[int, int]] = set()

    def compose(self) -> ComposeResult:
        with Grid(id="pictures"):
            yield ImageSlot("plan", self._graphics, id="plan-image")
            yield ImageSlot("baseline", self._graphics, id="baseline-image")
            yield DifferenceSlot(self._graphics, id="difference-image")
        yield Static("", id="difference")

    # ---------------------------------------------------------------------------------- the view

    @property
    def marks(self) -> dict[str, RunRecord]:
        """The runs marked A and B."""
        return dict(self._state.marks)

    def start_run(self, record: RunRecord) -> None:
        """A new run: it becomes the live one (previews are its) and the pane shows it."""
        self._state.live = record
        self._state.previews = {}
        self._state.view = record
        self._remember(record)
        self._redraw()

    def show_record(self, record: RunRecord) -> None:
        """A run's plan and baseline (a run chosen in the history, or the live run again)."""
        self._state.view = record
        self._remember(record)
        self._redraw()

    def _remember(self, record: RunRecord) -> None:
        if not any(run is record for run in self._state.runs):
            self._state.runs.append(record)

    def shows(self, record: RunRecord) -> bool:
        """Whether the pane shows this run's plan and baseline."""
        return self._state.view is record

    def refresh_record(self, record: RunRecord) -> None:
        """A run's images or status changed: redraw if the pane shows it (alone or as A or B)."""
        view = self._state.view
        if view is record or (isinstance(view, tuple) and any(r is record for r in view)):
            self._redraw()

    def show_preview(self, image: Image.Image, role: str, step: int, steps: int, job: int | None = None) -> None:
        """A live preview of the running run (drawn when the pane shows that run); one of another job
        than the live run's is dropped."""
        live = self._state.live
        if live is None or live.status != Status.RUNNING or (job is not None and job != live.job):
            return  # a preview that outlived its run
        self._state.previews[role] = Preview(image, step, steps)
        if kept_step(step, steps):
            stepped = self._state.stepped
            stepped.setdefault(live.job, {}).setdefault(role, {})[step] = Preview(image, step, steps)
            stepped.move_to_end(live.job)
            while len(stepped) > KEPT_RUNS:
                stepped.popitem(last=False)
        if self._state.view is live:
            self._redraw()

    def _baseline_previews(self, run: RunRecord) -> dict[int, Preview]:
        """A run's baseline previews: its own, or its plan's when the plan's image is the baseline (the
        identity plan: the engine sends that image as the baseline too)."""
        kept = self._state.stepped.get(run.job, {})
        if kept.get("baseline"):
            return kept["baseline"]
        if run.image is not None and run.baseline is not None and run.image.tobytes() == run.baseline.tobytes():
            return kept.get("plan", {})
        return {}

    def _baseline_steps(self, record: RunRecord) -> tuple[dict[int, Preview], RunRecord | None]:
        """The baseline previews of `record`, else of the latest other run of the same prompt and settings
        that has them (the engine's baseline is deterministic, and it reuses one it has made), and that run."""
        own = self._baseline_previews(record)
        if own:
            return own, None
        for run in reversed(self._state.runs):
            if run is not record and run.prompt == record.prompt and run.sampling == record.sampling:
                theirs = self._baseline_previews(run)
                if theirs:
                    return theirs, run
        return {}, None

    def step_through(self, delta: int) -> str:
        """Step the shown run's plan and baseline previews back (`delta` < 0) or forth; past the last kept
        step, the final images again. Returns what now shows."""
        view = self._state.view
        if not isinstance(view, RunRecord):
            return "per-step previews: show a run's images first"
        kept = self._state.stepped.get(view.job, {}).get("plan")
        if not kept:
            return "no per-step previews of this run (they are kept while a run of this session runs)"
        steps = sorted(kept)
        stepping = self._state.stepping
        at = stepping[1] if stepping is not None and stepping[0] is view else None
        if at is None:
            target: int | None = steps[-1] if delta < 0 else steps[0]
        else:
            index = steps.index(at) + delta
            target = steps[max(index, 0)] if index < len(steps) else None
        self._state.stepping = (view, target) if target is not None else None
        self._redraw()
        if target is None:
            return "the final images"
        return f"step {target}/{kept[target].steps}: plan and baseline previews ([ ] step)"

    def show_file(self, path: Path) -> None:
        """A PNG from disk in the first slot (captioned with its name), its run's baseline in the second."""
        self._state.view = open_file(path)
        self._redraw()

    def set_sweep(self, figures: list[tuple[str, Path]]) -> None:
        """The figures of the sweep now loaded (title, file), for `cycle_sweep`; an earlier sweep's figure
        on show gives way to the view before it."""
        self._state.figures = list(figures)
        if isinstance(self._state.view, SweepImage):
            self._state.view = self._state.before
            self._redraw()

    @property
    def showing_figure(self) -> SweepImage | None:
        view = self._state.view
        return view if isinstance(view, SweepImage) else None

    def cycle_sweep(self) -> str | None:
        """The sweep's next figure; after the last, the view shown before them. Returns what now shows
        (None: there is no sweep figure to show)."""
        figures = self._state.figures
        if not figures:
            return None
        view = self._state.view
        if isinstance(view, SweepImage):
            at = next((i for i, (_, path) in enumerate(figures) if path == view.path), len(figures) - 1) + 1
        else:
            self._state.before, at = view, 0
        if at >= len(figures):
            self._state.view = self._state.before
            self._redraw()
            return "the images again"
        title, path = figures[at]
        self._state.view = open_sweep_image(path, title)
        self._redraw()
        return f"the sweep's {title}"

    def mark(self, mark: str, record: RunRecord) -> str:
        """Mark a run as A or B; with both marked, show A vs B. Returns what to tell the user."""
        other = "B" if mark == "A" else "A"
        marks = self._state.marks
        if marks.get(other) is record:
            del marks[other]
        marks[mark] = record
        if other in marks:
            self._state.view = (marks["A"], marks["B"])
            self._redraw()
            return f"A: {marks['A'].label} · B: {marks['B'].label}"
        return f"{mark}: {record.started} {record.label} — mark another run {other} to compare"

    def _comparison(self) -> Comparison | None:
        view = self._state.view
        stepping = self._state.stepping
        if isinstance(view, RunRecord) and stepping is not None and stepping[0] is view:
            step = stepping[1]
            plan = self._state.stepped.get(view.job, {}).get("plan", {}).get(step)
            if plan is not None:
                baselines, borrowed = self._baseline_steps(view)
                return describe_step(view, step, plan.steps, plan, baselines.get(step), borrowed)
        if isinstance(view, RunRecord):
            previews = self._state.previews if view is self._state.live else {}
            return describe_record(view, previews, same_baseline(view, self._state.runs))
        if isinstance(view, tuple):
            return describe_pair(*view)
        if isinstance(view, FileView):
            return describe_file(view)
        return None

    # ---------------------------------------------------------------------------------- drawing

    def _slots(self) -> tuple[ImageSlot, ImageSlot, DifferenceSlot]:
        return (self.query_one("#plan-image", ImageSlot), self.query_one("#baseline-image", ImageSlot),
                self.query_one(DifferenceSlot))

    def _alone(self, alone: bool) -> None:
        """One picture (a sweep's figure) or the three slots."""
        _, second, apart = self._slots()
        second.display = apart.display = not alone

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        first, second, apart = self._slots()
        line = self.query_one("#difference", Static)
        view = self._state.view
        self._alone(isinstance(view, SweepImage))
        if isinstance(view, SweepImage):
            detail = _size(view.image) if view.image is not None else view.problem
            first.show(Shown(view.image, f"sweep {view.title}", f"{detail} · {view.path.parent.name}"))
            second.show(Shown(None, "baseline"))
            apart.show_heat(Shown(None, "difference"), None)
            line.update(Text(f"{view.path} (P: next)"))
            self._place()
            return
        comparison = self._comparison()
        if comparison is None:
            first.show(Shown(None, "plan"))
            second.show(Shown(None, "baseline"))
            apart.show_heat(Shown(None, "difference"), None)
            line.update("")
            self._place()
            return
        first.show(comparison.first)
        second.show(comparison.second)
        a, b = comparison.first.image, comparison.second.image
        compared = self._compare(a, b) if comparison.comparable and a is not None and b is not None else None
        title = f"|{comparison.names[0]} − {comparison.names[1]}|"
        known = comparison.difference or (compared.difference if compared is not None else None)
        if not comparison.comparable:  # the line under the slots says why
            apart.show_heat(Shown(None, "difference"), None)
            line.update(Text(comparison.why_not))
        elif compared is None:
            apart.show_heat(Shown(None, title), None)
            line.update(Text(difference_line(comparison.names, known) if known is not None else "comparing…"))
        elif compared.heat is None:
            apart.show_heat(Shown(None, "difference", compared.problem), None)
            line.update(Text(f"{comparison.names[0]} vs {comparison.names[1]}: {compared.problem}"))
        else:
            apart.show_heat(Shown(compared.heat.image, title), compared.heat.peak)
            line.update(Text(difference_line(comparison.names, known) if known is not None else ""))
        self._place()

    def _compare(self, a: Image.Image, b: Image.Image) -> Compared | None:
        """The two images compared, from the cache; else computed in a thread (the pane redraws then)."""
        key = (id(a), id(b))
        hit = self._compared.get(key)
        if hit is not None and hit[0] is a and hit[1] is b:
            self._compared.move_to_end(key)
            return hit[2]
        if key not in self._comparing:
            self._comparing.add(key)
            self.run_worker(self._compare_in_thread(a, b), group="compare", exit_on_error=False)
        return None

    async def _compare_in_thread(self, a: Image.Image, b: Image.Image) -> None:
        key = (id(a), id(b))
        try:
            result = await asyncio.to_thread(compare, a, b)
        except Exception as exc:  # noqa: BLE001 - a comparison that fails says so in the pane
            result = Compared(None, None, f"cannot compare: {type(exc).__name__}: {exc}")
        finally:
            self._comparing.discard(key)
        self._compared[key] = (a, b, result)
        while len(self._compared) > COMPARED_CACHE:
            self._compared.popitem(last=False)
        comparison = self._comparison()
        if comparison is not None and comparison.first.image is a and comparison.second.image is b:
            self._redraw()

    def _place(self) -> None:
        """Lay the slots out in the pane's current size."""
        first, second, apart = self._slots()
        area = (self.content_size.width, self.content_size.height - 1)  # the line under the pictures
        if isinstance(self._state.view, SweepImage):
            if area[0] > 0 and area[1] > 0:
                alone = arrange([first.image.size if first.image is not None else (1, 1)], area, self.cell)
                grid = self.query_one("#pictures", Grid)
                grid.styles.grid_size_columns, grid.styles.grid_size_rows = 1, 1
                first.place(alone.boxes[0], self.cell)
            return
        sizes = [slot.image.size if slot.image is not None else None for slot in (first, second)]
        fallback = next((s for s in sizes if s is not None), (1, 1))
        images = [s or fallback for s in sizes]
        images.append(apart.image.size if apart.image is not None else images[0])
        if area[0] <= 0 or area[1] <= 0:
            return
        layout = arrange(images, area, self.cell)
        grid = self.query_one("#pictures", Grid)
        if (grid.styles.grid_size_columns, grid.styles.grid_size_rows) != (layout.columns, layout.rows):
            grid.styles.grid_size_columns = layout.columns
            grid.styles.grid_size_rows = layout.rows
        span = layout.columns * layout.rows - 2  # the difference fills the last row
        if apart.styles.column_span != span:
            apart.styles.column_span = span
        for slot, box in zip((first, second, apart), layout.boxes, strict=True):
            slot.place(box, self.cell)

    def on_mount(self) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._place()
