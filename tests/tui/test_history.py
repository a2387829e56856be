"""The run history: every run ends with a status word, one row per run, runs of earlier sessions read back
from the runs folder (images only when chosen), and enter on a run restores its plan, prompt and settings.
Against stub engines (no model), with run folders written here by hand or with LiveRun."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from PIL import Image
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Input

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Status
from dit_explore.engine.core.resolve import ModelSource, resolve
from dit_explore.engine.core.runs import LiveRun, list_runs, png_bytes, read_images, read_run
from dit_explore.engine.core.sampling import Timing
from dit_explore.tui.app import ExplorerApp
from dit_explore.tui.session import RunRecord
from dit_explore.tui.widgets.history_list import HistoryList, summary
from dit_explore.tui.widgets.layer_grid import LayerGrid
from tests.tui.pilot import drive, until
from tests.tui.stub_engine import StubEngine

SIZE = (140, 44)


class HoldingEngine(StubEngine):
    """A stub engine whose runs stay in flight until the test ends them, the way the real engine does:
    a newer run supersedes the one in flight, cancel cancels it, `crash` ends the process."""

    def __init__(self, source: ModelSource, runs: list[protocol.Run]) -> None:
        super().__init__(source, runs)
        self.held: int | None = None

    async def submit(self, request: protocol.Run | protocol.Analyze) -> int:
        if not isinstance(request, protocol.Run):
            return await super().submit(request)
        assert self.runs is not None
        if self.held is not None:
            self._events.put_nowait(protocol.Done(job=self.held, status=Status.SUPERSEDED))
        self.runs.append(request)
        self.held = request.job
        self.state = EngineState.BUSY
        return request.job

    def end(self, status: Status, message: str | None = None) -> None:
        assert self.held is not None
        self._events.put_nowait(protocol.Done(job=self.held, status=status, message=message))
        self.held = None
        self.state = EngineState.READY

    async def cancel(self, job: int | None = None) -> None:
        if self.held is not None:
            self.end(Status.CANCELLED)

    def crash(self) -> None:
        self.state = EngineState.CRASHED
        self._events.put_nowait(protocol.Crashed(exit_code=-9, log="engine.log", log_tail="killed"))


def make_app(tmp_path: Path, engines: list[StubEngine] | None = None, runs: list[protocol.Run] | None = None,
             holding: bool = False) -> ExplorerApp:
    source = resolve("tiny-flux")
    made = engines if engines is not None else []
    requests = runs if runs is not None else []

    def factory() -> StubEngine:
        engine = HoldingEngine(source, requests) if holding else StubEngine(source, requests)
        made.append(engine)
        return engine

    return ExplorerApp(source, graphics="halfcell", plans_dir=tmp_path / "plans", runs_dir=tmp_path / "runs",
                       engine_factory=factory)


def words(app: ExplorerApp) -> list[str]:
    """The status word of each history row, as shown (after the time)."""
    return [str(summary(r)).removeprefix(r.started).split()[0] for r in app.query_one(HistoryList).records]


def notes(app: ExplorerApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


def ready(app: ExplorerApp) -> Callable[[], bool]:
    return lambda: app.session.client is not None and app.session.client.hello is not None


# ----------------------------------------------------------------------------------------- statuses


def test_every_run_ends_superseded_cancelled_ok_failed_or_crashed(tmp_path: Path) -> None:
    engines: list[StubEngine] = []
    app = make_app(tmp_path, engines, holding=True)

    def statuses() -> list[Status]:
        return [r.status for r in app.session.records.values()]

    async def scenario(pilot: Pilot[Any]) -> None:
        await until(pilot, ready(app))
        engine = engines[0]
        assert isinstance(engine, HoldingEngine)
        await pilot.press("enter")
        await until(pilot, lambda: statuses() == [Status.RUNNING])
        await pilot.press("enter")  # a newer run replaces the one in flight
        await until(pilot, lambda: statuses() == [Status.SUPERSEDED, Status.RUNNING])
        await pilot.press("escape")  # cancels the job in flight
        await until(pilot, lambda: statuses()[-1] == Status.CANCELLED)
        await pilot.press("enter")
        await until(pilot, lambda: len(statuses()) == 3)
        engine.end(Status.OK)
        await until(pilot, lambda: statuses()[-1] == Status.OK)
        await pilot.press("enter")
        await until(pilot, lambda: len(statuses()) == 4)
        engine.end(Status.ERROR, "out of memory")
        await until(pilot, lambda: statuses()[-1] == Status.ERROR)
        await pilot.press("enter")
        await until(pilot, lambda: len(statuses()) == 5)
        engine.crash()  # the engine dies under the run in flight
        await until(pilot, lambda: statuses()[-1] == Status.CRASHED)
        await pilot.press("enter")  # a new engine takes the next run; stopping it ends that run too
        await until(pilot, lambda: len(engines) == 2 and len(statuses()) == 6)
        await app.session.handle(protocol.Stopped(exit_code=0))
        await until(pilot, lambda: statuses()[-1] == Status.CANCELLED)
        assert statuses() == [Status.SUPERSEDED, Status.CANCELLED, Status.OK, Status.ERROR, Status.CRASHED,
                              Status.CANCELLED]
        assert words(app) == ["superseded", "cancelled", "ok", "failed", "crashed", "cancelled"]

    drive(app, scenario)


# ------------------------------------------------------------------------------------------- rows


class HistoryHarness(App[None]):
    def compose(self) -> ComposeResult:
        yield HistoryList(id="history")


def test_one_row_per_run_cut_with_an_ellipsis_at_a_narrow_width() -> None:
    app = HistoryHarness()
    long = "single: looped parallel 10-28 x3 with a name far longer than the list is wide"
    records = [RunRecord(job=i, label=long if i % 2 else f"skip {i}", started="12:30:0" + str(i), plan_text="",
                         prompt="a lighthouse at dusk, oil on canvas, dramatic sky, highly detailed",
                         status=Status.OK if i % 3 else Status.SUPERSEDED) for i in range(1, 13)]

    async def scenario(pilot: Pilot[Any]) -> None:
        history = app.query_one(HistoryList)
        history.styles.width = 40
        history.styles.height = 6
        for record in records:
            history.add(record)
        await pilot.pause()
        assert history.virtual_size.height == len(records)  # one line each, the list scrolls
        history.scroll_home(animate=False)
        await pilot.pause()
        rows = [history.render_line(y).text for y in range(history.scrollable_content_region.height)]
        for record, row in zip(records, rows, strict=False):
            assert row.startswith(record.started) and row.rstrip().endswith("…"), row
            assert len(row) <= history.scrollable_content_region.width

    drive(app, scenario, size=(60, 20))


# --------------------------------------------------------------------------------- earlier sessions


def _png(color: tuple[int, int, int]) -> bytes:
    return png_bytes(Image.new("RGB", (64, 64), color), plans.Plan())


def write_run(runs: Path, name: str, *, status: str, model: str = "tiny-flux", single: str = "0-1, 6-7",
              plan_name: str | None = None, prompt: str = "a red fox", seed: int = 3, images: bool = True) -> Path:
    """A run folder the way the engine leaves one, written by hand."""
    folder = runs / name
    folder.mkdir(parents=True)
    text = plans.dumps(plans.Plan(name=plan_name).with_order("single", plans.parse_order(single)))
    if images:
        (folder / "000.png").write_bytes(_png((200, 40, 40)))
        (folder / "baseline-000.png").write_bytes(_png((40, 40, 200)))
    timing = {"total": 0.5, "text_encode": 0.1, "text_encode_cached": False, "transformer_steps": [0.1, 0.1],
              "decode": 0.05}
    record = {
        "format": 1, "status": status, "images": ["000.png"] if images else [],
        "baseline_images": ["baseline-000.png"] if images else [],
        "model": {"name": model, "location": "built-in", "kind": "tiny", "random_weights": False, "layout": {}},
        "plan": {"name": plan_name, "source": plan_name or "plan", "orders": {"single": single}, "active_steps": None,
                 "identity": False, "text": text},
        "prompts": [prompt],
        "sampling": {"seed": seed, "steps": 2, "width": 64, "height": 64, "guidance": 0.0,
                     "max_sequence_length": 32},
        "timing": {"per_image": [timing] if images else []}, "block_runs": None,
    }
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def earlier_runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    write_run(runs, "20250103-090000-001-skip", status="ok", plan_name="skip two", prompt="a red fox", seed=3)
    write_run(runs, "20250103-090100-002-skip", status="running", single="0-3", prompt="a blue bird",
              images=False)  # its engine died: never finished
    write_run(runs, "20250103-090200-003-other", status="ok", model="flux-schnell")  # another model's
    write_run(runs, "20250103-085900-004-parallel", status="cancelled", single="[0-3], 4-7", prompt="a cat")
    (runs / "not-a-run").mkdir()
    (runs / ".20250103-090300-005-x.partial-abc").mkdir()
    return runs


def test_the_runs_folder_is_read_back_oldest_first(tmp_path: Path) -> None:
    runs = earlier_runs(tmp_path)
    found = list_runs(runs, "tiny-flux")
    assert [r.path.name for r in found] == ["20250103-085900-004-parallel", "20250103-090000-001-skip",
                                            "20250103-090100-002-skip"]
    assert [r.status for r in found] == [Status.CANCELLED, Status.OK, Status.RUNNING]
    assert [r.label for r in found] == ["single: [0-3], 4-7", "skip two", "single: 0-3"]
    assert found[1].sampling == plans.Sampling(seed=3, steps=2, width=64, height=64, guidance=0.0)
    assert found[1].timing is not None and found[1].timing.transformer_steps == (0.1, 0.1)
    assert len(list_runs(runs)) == 4 and [r.model for r in list_runs(runs, "flux-schnell")] == ["flux-schnell"]
    assert [r.path.name for r in list_runs(runs, "tiny-flux", limit=2)] == ["20250103-090000-001-skip",
                                                                             "20250103-090100-002-skip"]
    assert list_runs(tmp_path / "nowhere") == []
    image, baseline = read_images(found[1].path)
    assert image is not None and baseline is not None and image.getpixel((0, 0)) == (200, 40, 40)
    assert read_images(found[2].path) == (None, None)


def test_a_run_written_live_by_the_engine_reads_back(tmp_path: Path) -> None:
    """LiveRun is how the engine writes: run.json says running until the end, then the status."""
    plan = plans.Plan().with_order("double", plans.parse_order("0-2"))
    out = tmp_path / "runs" / "20250104-120000-001-double-0-2"
    live = LiveRun(out, {"model": {"name": "tiny-flux"}, "plan": {"name": None, "text": plans.dumps(plan),
                                                                   "orders": {"double": "0-2"}},
                         "prompts": ["a boat"], "sampling": {"seed": 9, "steps": 2, "width": 64, "height": 64,
                                                             "guidance": 0.0},
                         "timing": {"per_image": []}, "block_runs": None})
    assert read_run(out).status == Status.RUNNING
    live.add_png(_png((1, 2, 3)), 0)
    timing = Timing(total=1.0, text_encode=0.0, text_encode_cached=True, transformer_steps=(0.4, 0.4), decode=0.2)
    live.update(timing={"per_image": [protocol.to_json(timing)]}, status=Status.OK.value)
    run = read_run(out)
    assert (run.status, run.images, run.baseline_images, run.timing) == (Status.OK, ("000.png",), (), timing)
    assert run.label == "double: 0-2" and run.prompt == "a boat" and run.sampling.seed == 9
    assert time.localtime(run.started)[:6] == (2025, 1, 4, 12, 0, 0)


def test_the_history_shows_earlier_sessions_and_enter_loads_one(tmp_path: Path) -> None:
    earlier_runs(tmp_path)
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        history = app.query_one(HistoryList)
        await until(pilot, lambda: len(history.records) == 3)
        assert [r.prompt for r in history.records] == ["a cat", "a red fox", "a blue bird"]
        assert words(app) == ["cancelled", "ok", "interrupted"]  # "running" on disk: its engine is gone
        assert all(r.status != Status.RUNNING for r in app.session.records.values())
        assert all(r.image is None and r.baseline is None for r in history.records)  # not read yet
        assert history.records[0].started == "Jan 03 08:59"
        await pilot.press("R")  # the history key
        assert app.focused is history
        await pilot.press("up", "enter")  # the run of "a red fox"
        record = history.records[1]
        await until(pilot, lambda: app.plan.order("single") == (0, 1, 6, 7))
        assert app.plan.name == "skip two"
        assert app.query_one("#prompt", Input).value == "a red fox"
        assert app.query_one("#seed", Input).value == "3" and app.query_one("#steps", Input).value == "2"
        assert record.image is not None and record.baseline is not None and record.difference is not None
        assert history.records[0].image is None  # only the chosen run's images are read
        assert "PSNR" in str(summary(record))
        await pilot.press("escape")
        assert isinstance(app.focused, LayerGrid)

    drive(app, scenario)


def test_a_run_whose_plan_does_not_fit_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "20250103-090000-001-wide", status="ok", single="0-30", prompt="too wide")
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        history = app.query_one(HistoryList)
        await until(pilot, lambda: len(history.records) == 1)
        prompt = app.query_one("#prompt", Input).value
        await pilot.press("R", "enter")
        await until(pilot, lambda: "does not fit tiny-flux" in notes(app))
        assert "block index out of range" in notes(app)
        assert app.plan == plans.Plan() and app.query_one("#prompt", Input).value == prompt
        assert history.records[0].image is not None  # its images still show

    drive(app, scenario)


def test_enter_on_a_run_of_this_session_restores_its_plan_prompt_and_settings(tmp_path: Path) -> None:
    runs: list[protocol.Run] = []
    app = make_app(tmp_path, runs=runs)

    async def scenario(pilot: Pilot[Any]) -> None:
        await until(pilot, ready(app))
        app.query_one(LayerGrid).select("single", 2, 5)
        await pilot.press("r")
        app.query_one("#prompt", Input).value = "a lighthouse"
        app.query_one("#seed", Input).value = "11"
        await pilot.press("enter")
        await until(pilot, lambda: [r.status for r in app.session.records.values()] == [Status.OK])
        ran = app.plan
        await pilot.press("c")
        app.query_one("#prompt", Input).value = "something else"
        app.query_one("#seed", Input).value = "0"
        assert app.plan != ran
        await pilot.press("R", "enter")
        await until(pilot, lambda: app.plan.order("single") == ran.order("single"))
        assert app.query_one("#prompt", Input).value == "a lighthouse"
        assert app.query_one("#seed", Input).value == "11"
        await pilot.press("R")  # the key again: back to the grid
        assert isinstance(app.focused, LayerGrid)
        await pilot.press("u")  # the plan change is undoable
        assert app.plan.orders == ()

    drive(app, scenario)


def test_an_explorer_restart_keeps_the_history(tmp_path: Path) -> None:
    """Runs written in one session (here by LiveRun, as the engine does) are there in the next."""
    out = tmp_path / "runs" / time.strftime("%Y%m%d-%H%M%S-001-full-model")
    live = LiveRun(out, {"model": {"name": "tiny-flux"}, "plan": {"name": None, "text": plans.dumps(plans.Plan())},
                         "prompts": ["a dog"], "sampling": {"seed": 1}})
    live.update(status=Status.SUPERSEDED.value)
    os.utime(out / "run.json")
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        history = app.query_one(HistoryList)
        await until(pilot, lambda: len(history.records) == 1)
        record = history.records[0]
        assert record.past and record.status == Status.SUPERSEDED and record.label == "full model"
        assert len(record.started) == 8  # today: the time only

    drive(app, scenario)
