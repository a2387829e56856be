"""The explorer app: layer grid, plan editing with undo, runs on the engine process, images and timing.

The app owns the plan (an immutable value on an undo stack) and the engine client; widgets report
what the user did with typed messages and the app decides. Every engine event comes through one
worker (`_engine_session`), and every failure ends as a notification with the log path, never as a
crash of the interface.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input

from engine import plan as plans
from engine.client import BUSY, CRASHED, READY, STOPPED, UNRESPONSIVE, EngineClient, EngineError
from engine.catalog import DEFAULT_PROMPT
from engine.protocol import Event
from engine.resolve import ModelSource
from tui import editing
from tui.keys import APP_KEYS, EDIT_KEYS, bindings
from tui.screens.dialogs import AskDialog, OpenDialog
from tui.screens.help import HelpScreen
from tui.themes import DEFAULT_THEME, available_themes
from tui.widgets.history_list import HistoryList, RunRecord
from tui.widgets.image_pane import ImagePane
from tui.widgets.layer_grid import LayerGrid
from tui.widgets.plan_bar import PlanBar
from tui.widgets.sampling_form import SamplingForm
from tui.widgets.status_panel import StatusPanel

SAVED_PLANS = Path(__file__).resolve().parents[1] / "saved_plans"


class Engine(Protocol):
    """What the app needs of an engine client (EngineClient; tests may pass a stand-in)."""

    state: str
    log_path: Path
    hello: Event | None

    @property
    def alive(self) -> bool: ...

    async def start(self, timeout: float = ...) -> Event: ...
    def events(self) -> Any: ...
    async def run(self, plan_text: str, prompts: list[str], sampling: Any = ..., **kwargs: Any) -> int: ...
    async def analyze(self, prompts: list[str] | None = ..., sampling: Any = ..., **kwargs: Any) -> int: ...
    async def cancel(self, job: int | None = ...) -> None: ...
    async def shutdown(self, timeout: float = ...) -> int | None: ...


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "plan"


class ExplorerApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "dit-explore"
    BINDINGS = bindings(APP_KEYS)

    def __init__(
        self,
        source: ModelSource,
        *,
        plan: plans.Plan | None = None,
        graphics: str = "auto",
        plans_dir: Path = Path("saved_plans"),
        runs_dir: Path = Path("runs"),
        theme: str = DEFAULT_THEME,
        keymap: dict[str, str] | None = None,
        engine_factory: Callable[[], Engine] | None = None,
        device: str = "auto",
        dtype: str | None = None,
        random_weights: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.layout_info = source.layout
        self.plan = plan or plans.Plan()
        self.undo_stack: list[plans.Plan] = []
        self.redo_stack: list[plans.Plan] = []
        self.graphics = graphics
        self.plans_dir = plans_dir
        self.runs_dir = runs_dir
        self._theme_name = theme
        self._keymap = dict(keymap or {})
        self._engine_factory = engine_factory or (lambda: EngineClient(
            source.name, device=device, dtype=dtype, random_weights=random_weights, compile=compile))
        self.client: Engine | None = None
        self.records: dict[int, RunRecord] = {}
        self._pending_run: tuple[str, list[str], dict[str, Any], RunRecord] | None = None
        self.similarity: Any = None  # engine.similarity.SimilarityResult once an analysis lands
        self._analysis_job: int | None = None
        self._analysis_prompts: list[str] | None = None  # None: the default prompt set
        self.sub_title = f"{source.name} · {source.family} · {source.layout.describe()}"

    # ------------------------------------------------------------------------------- building

    def compose(self) -> ComposeResult:
        defaults = self.source.defaults
        sampling = self.plan.sampling
        values = {
            "seed": sampling.seed if sampling.seed is not None else 0,
            "steps": sampling.steps or defaults.steps,
            "width": sampling.width or defaults.width,
            "height": sampling.height or defaults.height,
            "guidance": sampling.guidance if sampling.guidance is not None else defaults.guidance,
        }
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                with VerticalScroll(id="grid-scroll"):
                    yield LayerGrid(self.layout_info, self.plan, id="grid")
                yield PlanBar(id="plan-bar")
                yield SamplingForm(sampling.prompt or DEFAULT_PROMPT, values, id="form")
            with Vertical(id="right"):
                yield ImagePane(self.graphics, id="images")
                yield StatusPanel(id="status")
                yield HistoryList(id="history")
        yield Footer()

    def on_mount(self) -> None:
        for theme in available_themes().values():
            self.register_theme(theme)
        self.theme = self._theme_name
        if self._keymap:
            self.set_keymap(self._keymap)
        self.query_one(LayerGrid).focus()
        self._show_plan()
        self.start_engine()

    # ----------------------------------------------------------------------------------- plan

    def _problem(self, plan: plans.Plan) -> str | None:
        try:
            plans.validate(plan, self.layout_info, source="plan")
        except plans.PlanError as exc:
            return exc.problems[0].removeprefix("plan: ")
        return None

    def _show_plan(self) -> None:
        self.query_one(LayerGrid).set_plan(self.plan)
        self.query_one(PlanBar).show(self.plan, self.layout_info, self._problem(self.plan))

    def set_plan(self, plan: plans.Plan, *, undoable: bool = True) -> None:
        if plan == self.plan:
            return
        if undoable:
            self.undo_stack.append(self.plan)
            self.redo_stack.clear()
        self.plan = plan
        self._show_plan()

    def on_layer_grid_edit_requested(self, message: LayerGrid.EditRequested) -> None:
        operation = getattr(editing, message.op)
        try:
            self.set_plan(operation(self.plan, self.layout_info, message.stack, message.first, message.last))
        except ValueError as exc:
            self.notify(str(exc), severity="error")

    def on_layer_grid_looped_requested(self, message: LayerGrid.LoopedRequested) -> None:
        stack, first, last = message.stack, message.first, message.last

        def check(value: str) -> str | None:
            if not value.isdigit() or not 1 <= int(value) <= plans.MAX_COUNT:
                return f"a whole number from 1 to {plans.MAX_COUNT}"
            return None

        def apply(value: str | None) -> None:
            if value is not None:
                self.set_plan(editing.parallel(self.plan, self.layout_info, stack, first, last, int(value)))

        self.push_screen(AskDialog(f"Looped parallel over {stack} {first}-{last}: how many loops?", "3",
                                   check=check), apply)

    def action_undo(self) -> None:
        if not self.undo_stack:
            self.notify("nothing to undo")
            return
        self.redo_stack.append(self.plan)
        self.plan = self.undo_stack.pop()
        self._show_plan()

    def action_redo(self) -> None:
        if not self.redo_stack:
            self.notify("nothing to redo")
            return
        self.undo_stack.append(self.plan)
        self.plan = self.redo_stack.pop()
        self._show_plan()

    def action_clear_plan(self) -> None:
        self.set_plan(editing.clear(self.plan))

    # ------------------------------------------------------------------------------ engine

    @work(exclusive=True, group="engine", exit_on_error=False)
    async def start_engine(self) -> None:
        """One engine session: start, follow its events until it stops or crashes."""
        status = self.query_one(StatusPanel)
        client = self._engine_factory()
        self.client = client
        status.show_state("starting…")
        try:
            await client.start()
        except EngineError as exc:
            status.show_state(f"failed to start: {exc}", "bold red")
            self.notify(f"{exc}", title="engine", severity="error", timeout=15)
            return
        async for event in client.events():
            try:
                self.on_engine_event(event)
            except Exception as exc:  # noqa: BLE001 - a bad event must not take the interface down
                self.log.error(f"engine event {event.type}: {exc!r}")
                self.notify(f"could not show {event.type}: {exc}", severity="error")
        await self._submit_pending()

    def on_engine_event(self, event: Event) -> None:
        status = self.query_one(StatusPanel)
        handler = getattr(self, f"_engine_{event.type}", None)
        if handler is not None:
            handler(event, status)

    def _engine_hello(self, event: Event, status: StatusPanel) -> None:
        from engine.layout import Layout

        layout = Layout.from_json(event.get("layout"))
        if layout != self.layout_info:
            self.layout_info = layout
            self.query_one(LayerGrid).set_layout(layout)
            self._show_plan()
        status.show_state("loading the model…", "yellow")
        self.call_later(self._submit_pending)

    def _engine_loading(self, event: Event, status: StatusPanel) -> None:
        fraction = event.get("fraction")
        pct = f" {fraction * 100:.0f}%" if fraction is not None else ""
        status.show_state(f"loading{pct} — {event.get('stage')} ({event.get('elapsed', 0):.0f} s)", "yellow")
        status.show_progress(fraction or 0, 1 if fraction is not None else None)

    def _engine_ready(self, event: Event, status: StatusPanel) -> None:
        kind = " · random weights" if event.get("random_weights") else ""
        status.show_state(f"ready on {event.get('device')} ({event.get('dtype')}{kind}), "
                          f"loaded in {event.get('load_seconds', 0):.1f} s", "green")
        status.show_progress(0, 0)
        if self.similarity is None:
            self._analysis_prompts = None  # the default prompt set; cached on disk after the first time
            self.call_later(self._submit_analysis)

    def _engine_progress(self, event: Event, status: StatusPanel) -> None:
        step, steps, role = event.get("step"), event.get("steps"), event.get("role")
        if role == "analyze":
            prompts, index = event.get("prompts", 1), event.get("index", 0)
            status.show_progress(index * steps + step, prompts * steps)
            status.show_state(f"analyzing block similarity — prompt {index + 1}/{prompts}, step {step}/{steps}",
                              "yellow")
            return
        phases = 2 if role == "baseline" or self._wants_baseline(event.job) else 1
        done = step + (steps if role == "baseline" else 0)
        status.show_progress(done, steps * phases)
        status.show_state(f"busy — {role} step {step}/{steps} ({event.get('elapsed', 0):.1f} s)", "yellow")
        if event.binary:
            preview = Image.open(io.BytesIO(event.binary))
            self.query_one(ImagePane).show_preview(preview, role, step, steps)

    def _wants_baseline(self, job: int | None) -> bool:
        record = self.records.get(job or -1)
        return record is not None and record.baseline is None

    def _engine_image(self, event: Event, status: StatusPanel) -> None:
        record = self.records.get(event.job or -1)
        if record is None:
            return
        image = Image.open(io.BytesIO(event.binary))
        image.load()
        if event.get("role") == "plan":
            record.image, record.timing, record.block_runs = image, event.get("timing"), event.get("block_runs")
            record.path = Path(event.get("path")).parent if event.get("path") else record.path
        else:
            record.baseline, record.baseline_timing = image, event.get("timing")
        self._show_record(record)

    def _engine_analysis(self, event: Event, status: StatusPanel) -> None:
        from engine.similarity import SimilarityResult, group_names

        result = SimilarityResult.from_json(event.get("result"))
        self.similarity = result
        self.query_one(LayerGrid).set_groups(result.stack_groups())
        described = "; ".join(
            f"{name}: " + ", ".join(f"{n} {a}-{b}" if a != b else f"{n} {a}"
                                    for n, (a, b) in zip(group_names(len(s.groups)), s.groups))
            for name, s in result.stacks.items())
        source = "from the cache" if event.get("cached") else f"over {len(result.prompts)} prompts"
        self.notify(f"similarity groups ({source}): {described}", title="analysis", timeout=8)
        if self._heatmap_open():  # show the new matrices in place of the old ones
            from tui.screens.heatmap import HeatmapScreen

            self.pop_screen()
            self.push_screen(HeatmapScreen(result))

    def _engine_done(self, event: Event, status: StatusPanel) -> None:
        record = self.records.get(event.job or -1)
        if record is not None:
            record.status = event.get("status")
            self.query_one(HistoryList).refresh_record(record)
        if event.get("status") == "cancelled":
            self.notify("run cancelled", timeout=3)
        is_analysis = event.job is not None and event.job == self._analysis_job
        if self.client is not None and self.client.state == READY:
            what = "analysis" if is_analysis else "last run"
            status.show_state(f"ready — {what} {event.get('status')} in {event.get('seconds', 0):.2f} s", "green")
        status.show_progress(0, 0)
        if is_analysis:
            self._analysis_job = None
        elif self.similarity is None and self._analysis_job is None and event.get("status") == "ok":
            self.call_later(self._submit_analysis)  # the analysis a run pre-empted: run it now

    def _engine_error(self, event: Event, status: StatusPanel) -> None:
        self.notify(f"{event.get('message')}\nlog: {event.get('log')}", title="engine error", severity="error",
                    timeout=15)
        if event.get("fatal"):
            status.show_state(f"stopped: {event.get('message')}", "bold red")

    def _engine_crashed(self, event: Event, status: StatusPanel) -> None:
        status.show_state(f"crashed (exit code {event.get('exit_code')}) — enter restarts it", "bold red")
        status.show_progress(0, 0)
        for record in self.records.values():
            if record.status == "running":
                record.status = "crashed"
                self.query_one(HistoryList).refresh_record(record)
        tail = (event.get("log_tail") or "").strip().splitlines()
        last = f"\n{tail[-1]}" if tail else ""
        self.notify(f"the engine exited with code {event.get('exit_code')}{last}\nlog: {event.get('log')}",
                    title="engine crashed", severity="error", timeout=20)

    def _engine_unresponsive(self, event: Event, status: StatusPanel) -> None:
        status.show_state(f"unresponsive — no answer for {event.get('seconds', 0):.0f} s", "bold red")

    def _engine_responsive(self, event: Event, status: StatusPanel) -> None:
        status.show_state("responsive again", "green")

    # ----------------------------------------------------------------------------------- runs

    async def action_run(self) -> None:
        problem = self._problem(self.plan)
        if problem:
            self.notify(problem, title="the plan cannot run", severity="error")
            return
        form = self.query_one(SamplingForm)
        prompt = form.prompt
        if not prompt:
            self.notify("the prompt is empty: press e to write one", severity="error")
            return
        try:
            sampling = form.sampling()
        except ValueError as exc:
            self.notify(f"sampling: {exc}", severity="error")
            return
        label = self.plan.name or self._describe(self.plan)
        record = RunRecord(job=-1, label=label, started=time.strftime("%H:%M:%S"), plan_text=plans.dumps(self.plan))
        self._pending_run = (record.plan_text, [prompt], sampling, record)
        client = self.client
        if client is None or not client.alive or client.state in (CRASHED, STOPPED):
            self.notify("starting a new engine", timeout=3)
            self.start_engine()  # the pending run is submitted on its hello
            return
        await self._submit_pending()

    async def _submit_pending(self) -> None:
        client, pending = self.client, self._pending_run
        if client is None or pending is None or client.hello is None or not client.alive:
            return
        self._pending_run = None
        self._analysis_job = None  # a run pre-empts an analysis in flight (latest wins); it is asked again after
        plan_text, prompts, sampling, record = pending
        out_dir = self.runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(record.label)}"
        try:
            job = await client.run(plan_text, prompts, sampling, out_dir=out_dir.resolve(),
                                   plan_source=self.plan.name or "plan")
        except EngineError as exc:
            self.notify(str(exc), title="engine", severity="error")
            return
        record.job, record.path = job, out_dir
        self.records[job] = record
        self.query_one(HistoryList).add(record)
        self.query_one(StatusPanel).show_state("busy — submitted", "yellow")

    async def _submit_analysis(self) -> None:
        client = self.client
        if client is None or not client.alive or client.hello is None or self._pending_run is not None:
            return
        if client.state == BUSY or any(r.status == "running" for r in self.records.values()):
            return  # a run is in flight (an analysis would cancel it); its `done` asks again
        try:
            sampling = self.query_one(SamplingForm).sampling()
            self._analysis_job = await client.analyze(self._analysis_prompts, sampling)
        except (EngineError, ValueError) as exc:
            self.notify(f"analysis: {exc}", severity="error")

    async def action_analyze(self) -> None:
        prompt = self.query_one(SamplingForm).prompt
        if not prompt:
            self.notify("the prompt is empty: press e to write one", severity="error")
            return
        if self.client is None or not self.client.alive:
            self.notify("the engine is not running: press enter to start it", severity="error")
            return
        self._analysis_prompts = [prompt]
        self.similarity = None
        await self._submit_analysis()

    def _heatmap_open(self) -> bool:
        from tui.screens.heatmap import HeatmapScreen

        return isinstance(self.screen, HeatmapScreen)

    def action_heatmap(self) -> None:
        from tui.screens.heatmap import HeatmapScreen

        if self._heatmap_open():
            self.pop_screen()
        elif self.similarity is None:
            self.notify("no similarity analysis yet: it runs when the model is ready (or press a)", severity="warning")
        else:
            self.push_screen(HeatmapScreen(self.similarity))

    async def action_cancel(self) -> None:
        grid = self.query_one(LayerGrid)
        if self.client is not None and self.client.state in (BUSY, UNRESPONSIVE) and self.client.alive:
            await self.client.cancel()
        elif isinstance(self.focused, Input):
            grid.focus()
        elif grid.has_selection():
            grid.clear_selection()

    def _describe(self, plan: plans.Plan) -> str:
        parts = [f"{name}: {plans.format_order(order)}" for name, order in plan.orders]
        return "; ".join(parts) if parts else "full model"

    def _show_record(self, record: RunRecord) -> None:
        self.query_one(ImagePane).show_result(record.image, record.baseline, {"label": record.label})
        self.query_one(StatusPanel).show_timing(record.timing, record.baseline_timing, record.block_runs)
        self.query_one(HistoryList).refresh_record(record)

    def on_history_list_chosen(self, message: HistoryList.Chosen) -> None:
        self._show_record(message.record)

    def on_sampling_form_submitted(self, _message: SamplingForm.Submitted) -> None:
        self.run_action("run")

    def action_edit_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    # ---------------------------------------------------------------------------------- files

    def _plan_to_save(self, name: str | None) -> plans.Plan:
        form = self.query_one(SamplingForm)
        sampling = plans.Sampling(prompt=form.prompt or None, **form.sampling())
        return replace(self.plan, name=name, model=self.source.name, sampling=sampling)

    def _save(self, name: str) -> None:
        plan = self._plan_to_save(name)
        try:
            path = plans.save(plan, self.plans_dir / f"{slug(name)}{plans.PLAN_SUFFIX}")
        except (OSError, ValueError) as exc:
            self.notify(f"cannot save: {exc}", severity="error")
            return
        self.set_plan(replace(self.plan, name=name))
        self.notify(f"saved {path}", title="plan saved", timeout=6)

    def action_save(self) -> None:
        name = self.plan.name or f"{self.source.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._save(name)

    def action_save_as(self) -> None:
        def check(value: str) -> str | None:
            return None if slug(value) != "plan" or value.strip().lower() == "plan" else "give the plan a name"

        self.push_screen(AskDialog("Save plan as (name):", self.plan.name or "", check=check),
                         lambda name: self._save(name) if name else None)

    def action_open(self) -> None:
        self.push_screen(OpenDialog([self.plans_dir, SAVED_PLANS]), self._open)

    def _open(self, path: str | None) -> None:
        if not path:
            return
        try:
            plan = plans.load(path)
            plans.validate(plan, self.layout_info, source=path)
        except plans.PlanError as exc:
            self.notify(str(exc), title="cannot open plan", severity="error", timeout=15)
            return
        if plan.model and plan.model != self.source.name:
            self.notify(f"{path} was written for {plan.model}", severity="warning")
        self.set_plan(plan)
        form = self.query_one(SamplingForm)
        if plan.sampling.prompt:
            form.set_prompt(plan.sampling.prompt)
        form.set_values({k: getattr(plan.sampling, k) for k in ("seed", "steps", "width", "height", "guidance")})
        self.notify(f"opened {path}", timeout=4)

    # ----------------------------------------------------------------------------- app-level

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self._keymap))

    async def action_quit(self) -> None:
        if self.client is not None:
            await self.client.shutdown()
        self.exit(0)

    async def action_restart_engine(self) -> None:
        if self.client is not None:
            await self.client.shutdown()
        self.start_engine()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette offers what applies now, as "category: Verb"."""
        yield from super().get_system_commands(screen)
        grid = self.query_one(LayerGrid)
        stack, first, last = grid.selection
        where = f"{stack} {first}-{last}" if first != last else f"{stack} {first}"
        for key in EDIT_KEYS:
            verb = {"skip": "Skip", "middle-repeat": "Middle-repeat", "reverse": "Reverse",
                    "parallel": "Parallel", "looped-parallel": "Looped parallel", "restore": "Restore"}[key.id]
            yield SystemCommand(f"plan: {verb} selection ({where})", key.help,
                                lambda key=key: grid.run_action(key.action))
        if self.plan.orders:
            yield SystemCommand("plan: Clear", "every block runs normally again", self.action_clear_plan)
        if self.undo_stack:
            yield SystemCommand("plan: Undo", "undo the last plan change", self.action_undo)
        if self.redo_stack:
            yield SystemCommand("plan: Redo", "redo", self.action_redo)
        yield SystemCommand("analysis: Analyze current prompt", "block-similarity matrices; groups recolor the grid",
                            lambda: self.run_action("analyze"))
        if self.similarity is not None:
            yield SystemCommand("analysis: Show heatmap", "the similarity matrices with their groups",
                                self.action_heatmap)
            yield SystemCommand("plan: Select group under cursor", "select the cursor's similarity group",
                                lambda: grid.run_action("select_group"))
        busy = self.client is not None and self.client.state in (BUSY, UNRESPONSIVE)
        yield SystemCommand("engine: Run plan", "run the plan and its baseline", lambda: self.run_action("run"))
        if busy:
            yield SystemCommand("engine: Cancel run", "stop the running job", lambda: self.run_action("cancel"))
        yield SystemCommand("engine: Restart", "stop the engine process and start a fresh one",
                            lambda: self.run_action("restart_engine"))
        yield SystemCommand("file: Save plan", f"save to {self.plans_dir}", self.action_save)
        yield SystemCommand("file: Save plan as…", "save under a name you choose", self.action_save_as)
        yield SystemCommand("file: Open plan…", "open a .plan.toml or a dit-explore PNG", self.action_open)
        yield SystemCommand("help: Keys", "every key and what the grid shows", self.action_help)

