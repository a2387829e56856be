"""The importance sweep in the explorer, against the stub engine on tiny-flux (double 4, single 8): `i`
sends a skip-each sweep of the form's prompt, its progress shows in the status and escape cancels it; when
it is done the grid shades each block by its cost (the costliest block at the top of the scale), `I`
gives the group colors back and `P` shows the sweep's plot and contact sheet in the image pane, shaped as
they are. Another model's or another kind's sweep shows its figures without an overlay; a folder
without a sweep is one line, never a crash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from rich.color import Color
from textual.pilot import Pilot
from textual.widgets import ProgressBar, Static

from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Status
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.widgets.image_pane import ImagePane, colormap
from dit_explore.tui.widgets.layer_grid import LayerGrid
from dit_explore.tui.widgets.sampling_form import SamplingForm
from tests.tui.pilot import drive, offline_app, until
from tests.tui.stub_engine import StubEngine
from tests.tui.sweeps import PLOT_SIZE, SHEET_SIZE, write_sweep
from tests.tui.test_images import check_geometry, layout_of

# By hand: cost = (40 - PSNR) / 30, clipped; identical (None) = 0; a string is the item's error.
PSNR: dict[str, list[float | str | None]] = {
    "double": [20.0, 12.0, 30.0, None],  # costs 0.67, 0.93 (the costliest), 0.33, 0
    "single": [25.0, 35.0, 31.0, 40.0, 28.0, 33.0, "out of memory (a batch of 1)", 38.0],
}
TINY = resolve("tiny-flux").layout


def sweep_folder(tmp_path: Path, model: str = "tiny-flux", name: str = "prepared") -> Path:
    layout = TINY if model == "tiny-flux" else resolve(model).layout
    psnr = PSNR if model == "tiny-flux" else {s.name: [30.0] * s.blocks for s in layout.stacks}
    return write_sweep(tmp_path / name, model, layout, psnr)


@dataclass(frozen=True)
class Cell:
    text: str  # the five columns after the glyph: index, then marker or bar
    shade: Color  # the background of the index
    bar: Color | None  # the color of the bar's first column (None: the columns after the index are blank)


def cells(grid: LayerGrid, stack: str) -> list[Cell]:
    """A stack's cells as drawn (a cell: glyph, five columns, a gap; tiny-flux's stacks fit one row)."""
    texts = [grid.render_line(y).text for y in range(grid.size.height)]
    row = 1 + next(y for y, text in enumerate(texts) if text.startswith(f"{stack}  "))
    columns = [(ch, segment.style) for segment in grid.render_line(row) for ch in segment.text]
    out = []
    for k in range(TINY.stack(stack).blocks):
        at = 7 * k + 1
        text = "".join(ch for ch, _ in columns[at : at + 5])
        bar = columns[at + 2][1].color if text[2:].strip() else None
        out.append(Cell(text, columns[at][1].bgcolor, bar))
    return out


def notices(app: ExplorerApp) -> list[str]:
    return [n.message for n in app._notifications]


def test_the_sweep_key_sweeps_the_prompt_and_the_grid_shows_what_each_block_costs(tmp_path: Path) -> None:
    app = offline_app(tmp_path, sweep_from=sweep_folder(tmp_path))

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        await until(pilot, lambda: app.session.similarity is not None)  # the group colors are in
        await pilot.pause()
        group_colors = [c.shade for c in cells(grid, "double")]
        await pilot.press("i")
        await until(pilot, lambda: grid.importance is not None)
        await pilot.pause()
        engine = app.session.client
        assert isinstance(engine, StubEngine)
        (request,) = engine.sweeps
        assert request.kind == "skip-each" and request.prompt == app.query_one(SamplingForm).prompt
        assert Path(request.out_dir).parent == (tmp_path / "runs" / "sweeps").resolve()
        assert Path(request.out_dir).name.endswith("-skip-each")
        double, single = cells(grid, "double"), cells(grid, "single")
        top, bottom = Color.from_rgb(*colormap(1.0)), Color.from_rgb(*colormap(0.0))
        assert double[1].shade == top  # double 1 (12 dB) is the costliest: the top of the scale
        assert double[3].shade == bottom  # identical to the full model: costs nothing
        assert double[0].shade == Color.from_rgb(*colormap((20 / 30) / (28 / 30)))  # its cost over the top one
        assert double[1].text == " 1███" and double[1].bar == top  # a full bar in the same shade
        assert double[0].text == " 0██▏" and double[3].text == " 3   "  # 0.71 of 24 eighths: 17; none
        assert single[6].text == " 6 ✗ "  # its item failed: no cost
        texts = [grid.render_line(y).text for y in range(grid.size.height)]
        assert texts[0].strip() == "cursor double 0  · left out: PSNR 20.0 dB · cost 0.67"
        assert any(t.startswith("importance: PSNR drop when the block is left out") for t in texts)
        assert any("cost 0 " in t and "0.93 (double 1, PSNR 12.0 dB)" in t for t in texts)
        assert "I: group colors" in " ".join(notices(app))

        await pilot.press("I")  # the group colors again
        await pilot.pause()
        assert [c.shade for c in cells(grid, "double")] == group_colors
        assert not any(t.startswith("importance:") for t in [grid.render_line(y).text for y in range(grid.size.height)])
        await pilot.press("I")
        await pilot.pause()
        assert cells(grid, "double")[1].shade == top

    drive(app, scenario, hello=True)


class HeldEngine(StubEngine):
    """A sweep that stays in flight after its first items (until cancelled, as the engine does)."""

    def sweep(self, request: protocol.Sweep) -> int:
        self.sweeps.append(request)
        self.state = EngineState.BUSY
        for done, label in ((1, "full model"), (2, "double: skip 0")):
            self._events.put_nowait(protocol.Progress(job=request.job, index=0, role=protocol.Role.SWEEP, step=done,
                                                      steps=13, elapsed=0.5, label=label))
        return request.job

    async def cancel(self, job: int | None = None) -> None:
        self.state = EngineState.READY
        last = self.sweeps[-1]
        self._events.put_nowait(protocol.Done(job=last.job, status=Status.CANCELLED, images=2, path=last.out_dir))


def test_a_sweeps_progress_shows_in_the_status_and_escape_cancels_it(tmp_path: Path) -> None:
    source = resolve("tiny-flux")
    app = offline_app(tmp_path, engine_factory=lambda: HeldEngine(source))

    async def scenario(pilot: Pilot[Any]) -> None:
        state = app.query_one("#engine-state", Static)
        bar = app.query_one("#progress", ProgressBar)
        await pilot.press("i")
        await until(pilot, lambda: "sweep 2/13" in str(state.render()))
        assert "sweep 2/13: double: skip 0" in str(state.render())
        assert bar.display and bar.total == 13 and bar.progress == 2
        record = app.session.sweep_record
        assert record is not None and record.status == Status.RUNNING
        await pilot.press("escape")
        await until(pilot, lambda: record.status == Status.CANCELLED)
        await pilot.pause()
        assert any(m.startswith("sweep cancelled: 2 of 13 items kept in") for m in notices(app))
        assert app.query_one(LayerGrid).importance is None and not bar.display

    drive(app, scenario, hello=True)


def test_another_models_or_kinds_sweep_gives_its_figures_without_an_overlay(tmp_path: Path) -> None:
    """Any sweep's plot and contact sheet open in the image pane; the overlay reads skip-each sweeps of
    this model only, and says so in one line. A folder with no sweep (or a sweep without figures) is one
    line, never a crash."""
    app = offline_app(tmp_path)
    other = sweep_folder(tmp_path, "toy-flux", "toy")
    middle = write_sweep(tmp_path / "middle", "tiny-flux", TINY, PSNR, kind="skip-middle-n")
    bare = write_sweep(tmp_path / "bare", "tiny-flux", TINY, PSNR, kind="repeat-middle-n")
    for figure in ("plot.png", "contact_sheet.png"):
        (bare / figure).unlink()

    async def scenario(pilot: Pilot[Any]) -> None:
        pane = app.query_one(ImagePane)
        for folder, what in ((other, "a skip-each sweep of toy-flux"), (middle, "a skip-middle-n sweep of tiny-flux")):
            app._open(str(folder))  # what the open dialog returns for a typed path
            await until(pilot, lambda what=what: any(what in m for m in notices(app)))
            (said,) = [m for m in notices(app) if what in m]
            assert said == (f"[b]sweep:[/b] {what}: P shows its plot and contact sheet; no importance overlay "
                            "(it reads skip-each sweeps of tiny-flux)")
            assert app.query_one(LayerGrid).importance is None
            await pilot.press("P")
            for _ in range(3):
                await pilot.pause()
            assert pane.showing_figure is not None and pane.showing_figure.path == folder / "plot.png"
            await pilot.press("P", "P")  # the contact sheet, then the images again
            await pilot.pause()
        app._open(str(bare))
        await until(pilot, lambda: any("no plot or contact sheet" in m for m in notices(app)))
        (said,) = [m for m in notices(app) if "no plot or contact sheet" in m]
        assert said.endswith(f"{bare}: a repeat-middle-n sweep; the importance overlay reads skip-each sweeps "
                        "(and it has no plot or contact sheet)") and "\n" not in said
        app._open(str(tmp_path))  # no sweep at all
        await until(pilot, lambda: any("not a sweep folder" in m for m in notices(app)))
        assert app.query_one(LayerGrid).importance is None and app.is_running

    drive(app, scenario, hello=True)


def test_the_sweeps_plot_and_contact_sheet_in_the_image_pane(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    folder = sweep_folder(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        pane = app.query_one(ImagePane)
        await pilot.press("P")  # nothing to show yet: said so
        await pilot.pause()
        assert any("no sweep yet" in m for m in notices(app))
        app._open(str(folder))  # a sweep folder, opened
        await until(pilot, lambda: app.query_one(LayerGrid).importance is not None)
        for title, size in (("plot", PLOT_SIZE), ("contact sheet", SHEET_SIZE)):
            await pilot.press("P")
            for _ in range(3):
                await pilot.pause()
            layout = layout_of(pane)
            check_geometry(layout, images=1)  # its shape kept, captions apart
            first = layout["slots"][0]
            assert first["image"] == list(size) and first["title_text"] == f"sweep {title}"
            assert [s["picture"] for s in layout["slots"][1:]] == [None, None]  # alone in the pane
            assert str(folder / ("plot.png" if title == "plot" else "contact_sheet.png")) in layout["line_text"]
        await pilot.press("P")  # back to the images shown before
        for _ in range(3):
            await pilot.pause()
        assert pane.showing_figure is None and layout_of(pane)["slots"][0]["image"] is None

    drive(app, scenario, hello=True)
