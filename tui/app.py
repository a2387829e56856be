"""The explorer app: layer grid, plan editing with undo, images and timing; it draws.

The plan is an immutable value on an undo stack. Everything about the engine — job state, scheduling,
the analysis policy, what an event means — is the session's (tui/session.py); the app starts it in
one worker and draws the typed messages it posts. Widgets report what the user did with typed messages
and the app decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input
from textual.worker import Worker, WorkerState

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import DEFAULT_PROMPT
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.resolve import ModelSource
from dit_explore.engine.core.sampling import check_prompts, resolve_settings
from dit_explore.engine.core.similarity import group_labels
from dit_explore.tui import editing
from dit_explore.tui.client import EngineClient
from dit_explore.tui.keys import APP_KEYS, EDITS, Edit, bindings
from dit_explore.tui.screens.dialogs import AskDialog, OpenDialog
from dit_explore.tui.screens.help import HelpScreen
from dit_explore.tui.session import (
    AnalysisLanded,
    Engine,
    LayoutChanged,
    Notice,
    PreviewShown,
    ProgressShown,
    RecordChanged,
    RunRecord,
    RunWish,
    Session,
    StateShown,
    slug,
)
from dit_explore.tui.themes import DEFAULT_THEME, available_themes
from dit_explore.tui.widgets.history_list import HistoryList
from dit_explore.tui.widgets.image_pane import ImagePane
from dit_explore.tui.widgets.layer_grid import LayerGrid
from dit_explore.tui.widgets.plan_bar import PlanBar
from dit_explore.tui.widgets.sampling_form import SamplingForm
from dit_explore.tui.widgets.status_panel import StatusPanel

W = TypeVar("W", bound=Widget)


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
        self.plan = plan or plans.Plan()
        self.undo_stack: list[plans.Plan] = []
        self.redo_stack: list[plans.Plan] = []
        self.graphics = graphics
        self.plans_dir = plans_dir
        self._theme_name = theme
        self._user_keys = dict(keymap or {})
        factory = engine_factory or (lambda: EngineClient(
            source.name, device=device, dtype=dtype, random_weights=random_weights, compile=compile))
        self.session = Session(source.layout, factory, self.post_message, runs_dir=runs_dir,
                               ensure_engine=self.start_engine)
        self.sub_title = f"{source.name} · {source.family} · {source.layout.describe()}"

    @property
    def layout_info(self) -> Layout:
        """The model's stacks as the engine last described them (the resolved source's until its hello)."""
        return self.session.layout

    # ------------------------------------------------------------------------------- building

    def compose(self) -> ComposeResult:
        settings = resolve_settings(self.source.defaults, self.plan.sampling)
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                with VerticalScroll(id="grid-scroll"):
                    yield LayerGrid(self.layout_info, self.plan, id="grid")
                yield PlanBar(id="plan-bar")
                yield SamplingForm(self.plan.sampling.prompt or DEFAULT_PROMPT, settings, id="form")
            with Vertical(id="right"):
                yield ImagePane(self.graphics, id="images")
                yield StatusPanel(id="status")
                yield HistoryList(id="history")
        yield Footer()

    def on_mount(self) -> None:
        for theme in available_themes().values():
            self.register_theme(theme)
        self.theme = self._theme_name
        if self._user_keys:
            self.set_keymap(self._user_keys)
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
        edit, stack, first, last = message.edit, message.stack, message.first, message.last
        if edit.asks_loops:
            self._ask_loops(edit, stack, first, last)
            return
        try:
            self.set_plan(edit.apply(self.plan, self.layout_info, stack, first, last))
        except ValueError as exc:
            self.notify(str(exc), severity="error")

    def _ask_loops(self, edit: Edit, stack: str, first: int, last: int) -> None:
        """Ask for a loop count, bounded by what the plan can still take (the per-step execution limit)."""
        most = editing.max_loops(self.plan, self.layout_info, stack, first, last)
        if most < 1:
            self.notify(f"{stack} runs {plans.MAX_EXECUTIONS} block executions per step already: no room for a "
                        f"group over {first}-{last}", severity="error")
            return

        def check(value: str) -> str | None:
            if not value.isdigit() or not 1 <= int(value) <= most:
                return f"a whole number from 1 to {most}"
            return None

        def apply(value: str | None) -> None:
            if value is not None:
                self.set_plan(edit.apply(self.plan, self.layout_info, stack, first, last, loops=int(value)))

        self.push_screen(AskDialog(f"{edit.verb} over {stack} {first}-{last}: how many loops (1-{most})?",
                                   str(min(3, most)), check=check), apply)

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
        """One engine, followed by the session until it stops or crashes."""
        await self.session.follow()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The error funnel for workers: a failed worker is reported, never fatal to the app."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.log.error(f"worker {event.worker.name} failed: {error!r}")
            self.notify(f"{type(error).__name__}: {error}", title=f"{event.worker.name} failed", severity="error",
                        timeout=15)

    def _widget(self, cls: type[W]) -> W | None:
        """The main screen's widget of this class; None while the app is winding down (the session's
        messages can still arrive then, e.g. when the engine stops)."""
        found = self.query(cls)
        return found.first() if found else None

    def on_state_shown(self, message: StateShown) -> None:
        if (panel := self._widget(StatusPanel)) is not None:
            panel.show_state(message.text, message.style)

    def on_progress_shown(self, message: ProgressShown) -> None:
        if (panel := self._widget(StatusPanel)) is not None:
            panel.show_progress(message.done, message.total)

    def on_preview_shown(self, message: PreviewShown) -> None:
        if (pane := self._widget(ImagePane)) is not None:
            pane.show_preview(message.image, message.role, message.step, message.steps)

    def on_record_changed(self, message: RecordChanged) -> None:
        history = self._widget(HistoryList)
        if history is None:
            return
        if message.added:
            history.add(message.record)
        else:
            history.refresh_record(message.record)
        if message.show:
            self._show_record(message.record)

    def on_layout_changed(self, message: LayoutChanged) -> None:
        self.query_one(LayerGrid).set_layout(message.layout)
        self.sub_title = f"{self.source.name} · {message.layout.family} · {message.layout.describe()}"
        self._show_plan()

    def on_analysis_landed(self, message: AnalysisLanded) -> None:
        result = message.result
        self.query_one(LayerGrid).set_groups(result.stack_groups())
        described = "; ".join(f"{name}: " + ", ".join(group_labels(s.groups)) for name, s in result.stacks.items())
        source = "from the cache" if message.cached else f"over {len(result.prompts)} prompts"
        self.notify(f"similarity groups ({source}): {described}", title="analysis", timeout=8)
        if self._heatmap_open():  # show the new matrices in place of the old ones
            from dit_explore.tui.screens.heatmap import HeatmapScreen

            self.pop_screen()
            self.push_screen(HeatmapScreen(result))

    def on_notice(self, message: Notice) -> None:
        self.notify(message.text, title=message.title, severity=message.severity,  # type: ignore[arg-type]
                    timeout=message.timeout)

    # ----------------------------------------------------------------------------------- runs

    def _form_values(self) -> tuple[str, plans.Sampling] | None:
        """The prompt and the sampling overrides of the form, checked as the CLI and the engine check
        them; None (and the reason shown) when they cannot run."""
        form = self.query_one(SamplingForm)
        try:
            (prompt,) = check_prompts([form.prompt], "prompt")
            sampling = plans.check_sampling(form.sampling(), "")
        except plans.PlanError as exc:
            self.notify(f"{exc} (e edits the prompt)", severity="error")
            return None
        except ValueError as exc:
            self.notify(f"sampling: {exc}", severity="error")
            return None
        return prompt, sampling

    async def action_run(self) -> None:
        problem = self._problem(self.plan)
        if problem:
            self.notify(problem, title="the plan cannot run", severity="error")
            return
        values = self._form_values()
        if values is not None:
            label = self.plan.name or self._describe(self.plan)
            await self.session.run(RunWish(self.plan, values[0], values[1], label))

    async def action_analyze(self) -> None:
        client = self.session.client
        if client is None or not client.alive:
            self.notify("the engine is not running: press enter to start it", severity="error")
            return
        values = self._form_values()
        if values is not None:
            self.session.analyze_prompt(*values)
            await self.session.submit_analysis()

    def _heatmap_open(self) -> bool:
        from dit_explore.tui.screens.heatmap import HeatmapScreen

        return isinstance(self.screen, HeatmapScreen)

    def action_heatmap(self) -> None:
        from dit_explore.tui.screens.heatmap import HeatmapScreen

        if self._heatmap_open():
            self.pop_screen()
        elif self.session.similarity is None:
            self.notify("no similarity analysis yet: it runs when the model is ready (or press a)", severity="warning")
        else:
            self.push_screen(HeatmapScreen(self.session.similarity))

    async def action_cancel(self) -> None:
        grid = self.query_one(LayerGrid)
        if await self.session.cancel():
            return
        if isinstance(self.focused, Input):
            grid.focus()
        elif grid.has_selection():
            grid.clear_selection()

    def _describe(self, plan: plans.Plan) -> str:
        parts = [f"{name}: {plans.format_order(order)}" for name, order in plan.orders]
        return "; ".join(parts) if parts else "full model"

    def _show_record(self, record: RunRecord) -> None:
        self.query_one(ImagePane).show_result(record.image, record.baseline, record.label, record.difference)
        self.query_one(StatusPanel).show_timing(record.timing, record.baseline_timing, record.block_runs)

    def on_history_list_chosen(self, message: HistoryList.Chosen) -> None:
        self._show_record(message.record)

    async def on_sampling_form_submitted(self, _message: SamplingForm.Submitted) -> None:
        await self.action_run()

    def action_edit_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    # ---------------------------------------------------------------------------------- files

    def _plan_to_save(self, name: str | None) -> plans.Plan:
        form = self.query_one(SamplingForm)
        sampling = replace(form.sampling(), prompt=form.prompt or None)
        return replace(self.plan, name=name, model=self.source.name, sampling=sampling)

    def _save(self, name: str) -> None:
        try:
            plan = self._plan_to_save(name)
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
        from dit_explore.engine.core.study import shipped_plans_dir

        self.push_screen(OpenDialog([self.plans_dir, shipped_plans_dir()]), self._open)

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
        self.set_plan(replace(plan, sampling=plans.Sampling()))  # the form holds the sampling from here
        form = self.query_one(SamplingForm)
        if plan.sampling.prompt:
            form.set_prompt(plan.sampling.prompt)
        form.set_values(resolve_settings(self.source.defaults, plan.sampling))
        self.notify(f"opened {path}", timeout=4)

    # ----------------------------------------------------------------------------- app-level

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self._user_keys))

    async def action_quit(self) -> None:
        await self.session.shutdown()
        self.exit(0)

    async def action_restart_engine(self) -> None:
        await self.session.restart()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette offers what applies now, as "category: Verb"."""
        yield from super().get_system_commands(screen)
        grid = self.query_one(LayerGrid)
        stack, first, last = grid.selection
        where = f"{stack} {first}-{last}" if first != last else f"{stack} {first}"
        for edit in EDITS:
            yield SystemCommand(f"plan: {edit.verb} selection ({where})", edit.help,
                                lambda edit=edit: grid.run_action(f"edit('{edit.id}')"))
        if self.plan.orders:
            yield SystemCommand("plan: Clear", "every block runs normally again", self.action_clear_plan)
        if self.undo_stack:
            yield SystemCommand("plan: Undo", "undo the last plan change", self.action_undo)
        if self.redo_stack:
            yield SystemCommand("plan: Redo", "redo", self.action_redo)
        yield SystemCommand("analysis: Analyze current prompt", "block-similarity matrices; groups recolor the grid",
                            lambda: self.run_action("analyze"))
        if self.session.similarity is not None:
            yield SystemCommand("analysis: Show heatmap", "the similarity matrices with their groups",
                                self.action_heatmap)
            yield SystemCommand("plan: Select group under cursor", "select the cursor's similarity group",
                                lambda: grid.run_action("select_group"))
        yield SystemCommand("engine: Run plan", "run the plan and its baseline", lambda: self.run_action("run"))
        if self.session.busy:
            yield SystemCommand("engine: Cancel run", "stop the running job", lambda: self.run_action("cancel"))
        yield SystemCommand("engine: Restart", "stop the engine process and start a fresh one",
                            lambda: self.run_action("restart_engine"))
        yield SystemCommand("file: Save plan", f"save to {self.plans_dir}", self.action_save)
        yield SystemCommand("file: Save plan as…", "save under a name you choose", self.action_save_as)
        yield SystemCommand("file: Open plan…", "open a .plan.toml or a dit-explore PNG", self.action_open)
        yield SystemCommand("help: Keys", "every key and what the grid shows", self.action_help)
