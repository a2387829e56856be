"""The explorer app: layer grid, plan editing with undo, images and timing; it draws.

The plan is an immutable value on an undo stack. Everything about the engine — job state, scheduling,
the analysis policy, what an event means — is the session's (tui/session.py); the app starts it in
one worker and draws the typed messages it posts. Widgets report what the user did with typed messages
and the app decides.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.markup import escape
from textual.notifications import Notify, SeverityLevel
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, Input, Static
from textual.widgets._toast import ToastHolder, ToastRack
from textual.worker import Worker, WorkerState

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import default_prompt, unseen_words, vocabulary
from dit_explore.engine.core.importance import Importance, read_importance, sweep_figures
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.protocol import Status
from dit_explore.engine.core.resolve import ModelSource
from dit_explore.engine.core.sampling import check_prompts, field_problems, resolve_settings
from dit_explore.engine.core.similarity import group_labels
from dit_explore.engine.core.text import escape_controls
from dit_explore.tui import editing
from dit_explore.tui.client import EngineClient
from dit_explore.tui.errors import funnel, report
from dit_explore.tui.keys import APP_KEYS, COMPARE_KEYS, EDITS, FOOTER_ALWAYS, FOOTER_ORDER, Edit, bindings
from dit_explore.tui.probe import replay
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
    SweepEnded,
    SweepWish,
    slug,
)
from dit_explore.tui.themes import DEFAULT_THEME, use_themes
from dit_explore.tui.widgets.chrome import KeyFooter, ViewBar
from dit_explore.tui.widgets.history_list import HistoryList
from dit_explore.tui.widgets.image_pane import ImagePane
from dit_explore.tui.widgets.layer_grid import LayerGrid
from dit_explore.tui.widgets.plan_bar import PlanBar
from dit_explore.tui.widgets.sampling_form import SamplingForm
from dit_explore.tui.widgets.status_panel import StatusPanel

W = TypeVar("W", bound=Widget)


@funnel
class ExplorerApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "dit-explore"
    BINDINGS = bindings(APP_KEYS + COMPARE_KEYS)

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
        quantize: str | None = None,
        memory: str = "auto",
        typed: str = "",
    ) -> None:
        """`typed`: keys the user typed before the interface was up (tui/probe.py), delivered on mount."""
        super().__init__()
        self._typed = typed
        self.source = source
        self.plan = plan or plans.Plan()
        self.undo_stack: list[plans.Plan] = []
        self.redo_stack: list[plans.Plan] = []
        self.graphics = graphics
        self.plans_dir = plans_dir
        self._theme_name = theme
        self._user_keys = dict(keymap or {})
        factory = engine_factory or (lambda: EngineClient(
            source.name, device=device, dtype=dtype, random_weights=random_weights, compile=compile,
            quantize=quantize, memory=memory))
        self.session = Session(source.layout, factory, self.post_message, runs_dir=runs_dir,
                               ensure_engine=self.start_engine)
        self.sub_title = f"{source.name} · {source.family} · {source.layout.describe()}"
        self._view_focused: dict[str, Widget] = {}  # per view, where the focus was when it was left
        # The runs of earlier sessions: read once the app runs (a callback posted now runs after mount).
        self.call_later(self._load_history)

    @property
    def layout_info(self) -> Layout:
        """The model's stacks as the engine last described them (the resolved source's until its hello)."""
        return self.session.layout

    # ------------------------------------------------------------------------------- building

    # The layout by terminal size (app.tcss): the plan and the images side by side from WIDE columns, one
    # of them at a time (VIEWS, f2 switches) below, and only a note under MIN_SIZE.
    MIN_SIZE = Size(80, 24)
    WIDE = 140
    VIEWS = (("plan", "plan"), ("images", "images"))
    VIEW_FOCUS = {"plan": "#grid", "images": "#history"}  # what a view focuses when it first shows
    MAX_MESSAGES = 2  # toasts shown at once (the newest)
    MESSAGE_SECONDS: dict[SeverityLevel, float] = {"information": 3, "warning": 6, "error": 12}  # default, most

    def compose(self) -> ComposeResult:
        settings = resolve_settings(self.source.defaults, self.plan.sampling)
        yield Header(id="header")
        yield ViewBar(self.VIEWS, id="views")
        with Horizontal(id="main", classes="-view-plan"):
            with Vertical(id="left"):  # the plan view
                with VerticalScroll(id="grid-scroll", can_focus=False):  # the grid scrolls its cursor into view
                    yield LayerGrid(self.layout_info, self.plan, id="grid")
                yield PlanBar(id="plan-bar")
                yield SamplingForm(self.plan.sampling.prompt or default_prompt(self.source.name), settings,
                                   self._sampling_problems, known=vocabulary(self.source.name),
                                   unseen=functools.partial(unseen_words, self.source.name), id="form")
            with Vertical(id="right"):  # the images view
                yield ImagePane(self.graphics, id="images")
                yield StatusPanel(id="status")
                yield HistoryList(id="history")
        yield Static(f"terminal too small: need {self.MIN_SIZE.width}x{self.MIN_SIZE.height}", id="too-small")
        yield KeyFooter(FOOTER_ORDER, FOOTER_ALWAYS, id="footer")

    def on_mount(self) -> None:
        use_themes(self, self._theme_name)  # dit-explore's themes only, in the palette too
        if self._user_keys:
            self.set_keymap(self._user_keys)
        self._fit(self.size)
        self.query_one(LayerGrid).focus()
        self._show_plan()
        self.start_engine()
        if self._typed:  # keys typed before the interface was up: now, as if just typed
            self.call_after_refresh(replay, self, self._typed)

    # --------------------------------------------------------------------------------- layout

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size)

    def _fit(self, size: Size) -> None:
        """Give the app its size class (app.tcss); on the app, so every screen sees it, pushed ones too."""
        if size.width < self.MIN_SIZE.width or size.height < self.MIN_SIZE.height:
            fit = "-too-small"
        else:
            fit = "-narrow" if size.width < self.WIDE else "-wide"
        if self.has_class(fit):
            return
        self.remove_class("-too-small", "-narrow", "-wide")
        self.add_class(fit)
        if fit == "-narrow":  # show the view that has the focus
            self._show_view(self._view_of(self._main_screen.focused) or self._view)
        self.refresh_bindings()

    @property
    def _main_screen(self) -> Screen[object]:
        """The explorer's screen (the help, a dialog or the heatmap may be over it)."""
        return self.screen_stack[0]

    @property
    def _view(self) -> str:
        return self._main_screen.query_one(ViewBar).shown

    def _view_of(self, widget: Widget | None) -> str | None:
        """The view (VIEWS) a widget of the main screen is in; None for any other."""
        ids = {node.id for node in widget.ancestors_with_self} if widget is not None else set()
        return "plan" if "left" in ids else "images" if "right" in ids else None

    def _show_view(self, view: str) -> None:
        main = self._main_screen.query_one("#main")
        for name, _label in self.VIEWS:
            main.set_class(name == view, f"-view-{name}")
        self._main_screen.query_one(ViewBar).show(view)
        self.refresh_bindings()

    def action_show_view(self, view: str) -> None:
        """f2 in a narrow terminal: show the other view and focus where the user was in it."""
        leaving = self._view
        if view == leaving:
            return
        if self._view_of(self.focused) == leaving and self.focused is not None:
            self._view_focused[leaving] = self.focused
        self._show_view(view)
        target = self._view_focused.get(view)
        if target is None or not target.is_attached:
            target = self._main_screen.query_one(self.VIEW_FOCUS[view])
        target.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show_view":  # narrow terminals only, and only the view not shown (its footer entry)
            return self.has_class("-narrow") and parameters[:1] != (self._view,)
        return True

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Focus moved into the hidden view (e to edit the prompt from the images, say): show that view."""
        view = self._view_of(event.widget)
        if self.has_class("-narrow") and view is not None and view != self._view:
            self._show_view(view)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Messages are short lines at the top (app.tcss): the title inline, info gone in seconds.
        `message` and `title` are plain text — they often quote a plan ("[10-28]x3") or a file the user
        named, so neither is read as markup (a "[link=…]" in a plan name must not raise or inject an
        action) and their control characters are escaped; only the title's bold is markup."""
        most = self.MESSAGE_SECONDS[severity]
        timeout = most if timeout is None else min(timeout, most) if severity == "information" else timeout
        message = "\n".join(escape(escape_controls(line)) for line in message.split("\n"))
        if title:
            message = f"[b]{escape(escape_controls(title))}:[/b] {message}"
        if severity != "error":  # one line each; an error wraps, so its log path shows
            message = " · ".join(line.strip() for line in message.splitlines() if line.strip())
        super().notify(message, severity=severity, timeout=timeout, markup=True)

    def on_notify(self, event: Notify) -> None:
        """At most MAX_MESSAGES toasts (Textual has no cap): the new one, and of the others errors first,
        then the newest. A new error drops the others that are not errors: it gets the lines it needs."""
        new = event.notification
        others = [n for n in list(self._notifications) if n is not new]
        dropped = [n for n in others if new.severity == "error" and n.severity != "error"]
        others = sorted((n for n in others if n not in dropped), key=lambda n: n.severity == "error")
        dropped += others[: max(0, len(others) - (self.MAX_MESSAGES - 1))]
        for old in dropped:
            self._unnotify(old, refresh=False)
        # With their holders: Textual's rack removes a dropped (or cleared) toast but keeps its holder, and
        # with it a line.
        gone = {ToastRack._toast_id(old) for old in dropped}
        for holder in self.screen.query(ToastHolder):
            if holder.id in gone or not holder.children:
                holder.remove()

    # ----------------------------------------------------------------------------------- plan

    def _sampling_problems(self, sampling: plans.Sampling) -> dict[str, str]:
        """Why each sampling field cannot run (engine/core/sampling.py's rules), and whether the size fits
        in the memory the engine said it has (engine/core/memory.py's estimate), once it has said so."""
        problems = field_problems(sampling, self.source)
        ready = self.session.ready
        if ready is None or ready.available is None or {"width", "height", "steps", "guidance"} & set(problems):
            return problems
        from dit_explore.engine.core.memory import DEVICE_KINDS, check_request

        kind = ready.device.split(":")[0]
        if kind not in DEVICE_KINDS:
            return problems
        settings = resolve_settings(self.source.defaults, sampling)
        where = "the GPU" if kind == "cuda" else "the engine's machine"
        problem = check_request(self.source, settings.width, settings.height, ready.available, loaded=True,
                                where=where, guidance=settings.guidance, dtype=ready.dtype, device_kind=kind,
                                max_sequence_length=settings.max_sequence_length,
                                random_weights=ready.random_weights, cached_spans=len(plans.cache_keys(self.plan)))
        return {**problems, "width": problem} if problem else problems

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
            changed = edit.apply(self.plan, self.layout_info, stack, first, last)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one(LayerGrid).end_visual()  # an edit ends visual mode (the selection stays)
        if changed == self.plan:
            where = f"{stack} {first}" if first == last else f"{stack} {first}-{last}"
            why = ("on one block it changes nothing: select a range first (shift+arrows, or v then move)"
                   if first == last and edit.id in ("middle-repeat", "reverse", "parallel") else
                   "the plan already runs these blocks that way")
            self.notify(f"{edit.verb} {where}: {why}", severity="warning", timeout=5)
            return
        self.set_plan(changed)

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
            report(self, event.worker.error, f"worker {event.worker.name}")

    def _widget(self, cls: type[W]) -> W | None:
        """The main screen's widget of this class; None while the app is winding down (the session's
        messages can still arrive then, e.g. when the engine stops)."""
        found = self.query(cls)
        return found.first() if found else None

    def on_state_shown(self, message: StateShown) -> None:
        if (panel := self._widget(StatusPanel)) is not None:
            panel.show_state(message.text, message.style, message.since)
        if (views := self._widget(ViewBar)) is not None:
            views.show_state(message.text, message.style)

    def on_progress_shown(self, message: ProgressShown) -> None:
        if (panel := self._widget(StatusPanel)) is not None:
            panel.show_progress(message.done, message.total)

    def on_preview_shown(self, message: PreviewShown) -> None:
        if (pane := self._widget(ImagePane)) is not None:
            pane.show_preview(message.image, message.role, message.step, message.steps, message.job)

    def on_record_changed(self, message: RecordChanged) -> None:
        history, pane = self._widget(HistoryList), self._widget(ImagePane)
        if history is None or pane is None:
            return
        if message.added:  # a new run: the pane follows it (never another run's captions beside its images)
            history.add(message.record)
            pane.start_run(message.record)
            self._show_timing(message.record)
            return
        history.refresh_record(message.record)
        pane.refresh_record(message.record)  # redrawn if shown: images, or how it ended
        if pane.shows(message.record):
            self._show_timing(message.record)

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
            self.push_screen(HeatmapScreen(result, self.session.runs_dir))

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
            unseen = unseen_words(self.source.name, values[0])
            if unseen is not None:  # it runs anyway: what a toy makes of a strange word is worth seeing too
                self.notify(unseen, title="prompt", severity="warning", timeout=10)
            label = self.plan.name or plans.summary(self.plan)
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

    async def action_sweep(self) -> None:
        """The importance sweep: skip-each on the form's prompt and settings (the plan plays no part)."""
        values = self._form_values()
        if values is None:
            return
        blocks = self.layout_info.total_blocks
        self.notify(f"leaving each of the {blocks} blocks out in turn on this prompt ({blocks + 1} images; "
                    "escape cancels)", title="importance sweep", timeout=5)
        await self.session.run(SweepWish(values[0], values[1]))

    def on_sweep_ended(self, message: SweepEnded) -> None:
        record = message.record
        if record.status == Status.OK:
            self._load_sweep(record.path)
        elif record.status in (Status.CANCELLED, Status.SUPERSEDED, Status.CRASHED):  # an error said why already
            kept = f": {record.done} of {record.total} items kept in {record.path}" if record.done else ""
            self.notify(f"sweep {record.status}{kept}", severity="warning", timeout=6)

    @work(group="sweep", exclusive=True, exit_on_error=False)
    async def _load_sweep(self, folder: Path) -> None:
        """A sweep folder's importance onto the grid, its figures into the image pane. Another kind of
        sweep, or another model's, gives its figures alone (P shows them) and says why there is no
        overlay; a folder that holds no finished sweep is one line."""
        import asyncio

        try:
            importance = await asyncio.to_thread(read_importance, folder, self.source.name, self.layout_info)
        except ValueError as exc:
            try:
                what, figures = await asyncio.to_thread(sweep_figures, folder)
            except ValueError:
                self.notify(str(exc), title="cannot show the sweep", severity="error", timeout=12)
                return
            if not figures:
                self.notify(f"{exc} (and it has no plot or contact sheet)", title="cannot show the sweep",
                            severity="error", timeout=12)
                return
            self.query_one(ImagePane).set_sweep(figures)
            self.notify(f"{what}: P shows its {' and '.join(t for t, _ in figures)}; no importance overlay "
                        f"(it reads skip-each sweeps of {self.source.name})", title="sweep", timeout=10)
            return
        self._show_importance(importance)

    def _show_importance(self, importance: Importance) -> None:
        self.query_one(LayerGrid).set_importance(importance)
        figures = [(title, path) for title, path in (("plot", importance.plot),
                                                     ("contact sheet", importance.contact_sheet)) if path is not None]
        self.query_one(ImagePane).set_sweep(figures)
        self.notify(f"{importance.metric.what} when each block is left out, from {importance.folder.name} "
                    "(I: group colors · P: its plot)", title="importance", timeout=8)

    def action_toggle_importance(self) -> None:
        grid = self.query_one(LayerGrid)
        if not grid.toggle_importance():
            self.notify("no importance yet: i runs the sweep, ctrl+o opens a sweep folder", severity="warning")

    def action_sweep_images(self) -> None:
        """The sweep's plot, its contact sheet, then the run's images again (in the images view)."""
        shown = self.query_one(ImagePane).cycle_sweep()
        if shown is None:
            self.notify("no sweep yet: i runs one, ctrl+o opens a sweep folder", severity="warning")
            return
        if self.has_class("-narrow") and self._view != "images":
            self.action_show_view("images")
        self.notify(f"images: {shown} (P: next)", timeout=3)

    def action_step_previews(self, delta: int) -> None:
        """The shown run's plan and baseline at an earlier or later denoising step (their previews)."""
        said = self.query_one(ImagePane).step_through(delta)
        if self.has_class("-narrow") and self._view != "images":
            self.action_show_view("images")
        self.notify(said, timeout=3)

    def _heatmap_open(self) -> bool:
        from dit_explore.tui.screens.heatmap import HeatmapScreen

        return isinstance(self.screen, HeatmapScreen)

    def action_steps(self) -> None:
        """The step x block map of the plan, at the form's step count (the model's default while the
        form's steps cannot run); its edits land on the plan and its undo history."""
        from dit_explore.tui.screens.steps import StepsScreen

        if isinstance(self.screen, StepsScreen):
            self.pop_screen()
            return
        try:
            steps = resolve_settings(self.source.defaults, self.query_one(SamplingForm).sampling()).steps
        except ValueError:
            steps = resolve_settings(self.source.defaults, self.plan.sampling).steps
        self.push_screen(StepsScreen(self.layout_info, steps, lambda: self.plan, self.set_plan, self.action_undo,
                                     self.action_redo))

    def action_heatmap(self) -> None:
        from dit_explore.tui.screens.heatmap import HeatmapScreen

        if self._heatmap_open():
            self.pop_screen()
        elif self.session.similarity is None:
            self.notify("no similarity analysis yet: it runs when the model is ready (or press a)", severity="warning")
        else:
            self.push_screen(HeatmapScreen(self.session.similarity, self.session.runs_dir))

    async def action_cancel(self) -> None:
        """Escape: leave a text field first (back to the grid); else cancel the job in flight; else clear
        the selection."""
        grid = self.query_one(LayerGrid)
        if isinstance(self.focused, Input):
            grid.focus()
        elif await self.session.cancel():
            return
        elif grid.has_selection():
            grid.clear_selection()


    def _show_record(self, record: RunRecord) -> None:
        self.query_one(ImagePane).show_record(record)
        self._show_timing(record)

    def _show_timing(self, record: RunRecord) -> None:
        """The shown run's timing; a run without it says why (running, or how it ended), never another's."""
        panel = self.query_one(StatusPanel)
        if record.timing is not None:
            panel.show_timing(record.timing, record.baseline_timing, record.block_runs, record.speed)
            if record.speed is not None:
                self.query_one(LayerGrid).set_block_times(record.speed.blocks)
            return
        why = "running — timing when its image is in" if record.status == Status.RUNNING else \
            f"run {record.status} — no timing"
        panel.query_one("#timing", Static).update(Text(f"{record.label}: {why}", style="dim"))

    def action_mark_run(self, mark: str) -> None:
        """Mark the run highlighted in the history as A or B (the images show A vs B once both are)."""
        history = self.query_one(HistoryList)
        index = history.highlighted
        if index is None or not 0 <= index < len(history.records):
            self.notify("no run to mark yet: run a plan first", severity="warning")
            return
        self.notify(self.query_one(ImagePane).mark(mark, history.records[index]), title="compare", timeout=4)

    @work(group="history", exit_on_error=False)
    async def _load_history(self) -> None:
        """This model's runs of earlier sessions, read back from the runs folder into the history."""
        records = await self.session.load_past(self.source.name)
        if records and (history := self._widget(HistoryList)) is not None:
            history.add_past(records)

    def action_history(self) -> None:
        """The history key: to the run list (enter loads a run), or back to the grid from it."""
        history = self.query_one(HistoryList)
        if self.focused is history:
            self.query_one(LayerGrid).focus()
            return
        history.focus()
        if not history.records:
            self.notify("no runs yet: enter runs the plan", timeout=3)

    async def on_history_list_left(self, _message: HistoryList.Left) -> None:
        """Escape on the history: it cancels the job in flight first, as escape does elsewhere; with
        nothing running, back to the grid."""
        if not await self.session.cancel():
            self.query_one(LayerGrid).focus()

    async def on_history_list_chosen(self, message: HistoryList.Chosen) -> None:
        """Enter on a run: its images (read from its folder the first time for a run of an earlier
        session), and its plan, prompt and sampling back into the plan and the form. A plan that does not
        fit this model's stacks is refused, with the reason (its images still show)."""
        import asyncio
        import contextlib

        from dit_explore.engine.core.runs import read_images
        from dit_explore.tui.metrics import difference

        record = message.record
        if record.path is not None and record.status != Status.RUNNING and (
                record.image is None or record.baseline is None):
            image, baseline = await asyncio.to_thread(read_images, record.path)
            record.image = image if record.image is None else record.image
            record.baseline = baseline if record.baseline is None else record.baseline
            if record.difference is None and record.image is not None and record.baseline is not None:
                with contextlib.suppress(ValueError):  # sizes differ: no difference to show
                    record.difference = await asyncio.to_thread(difference, record.image, record.baseline)
            self.query_one(HistoryList).refresh_record(record)
        self._show_record(record)
        where = f"the run of {record.started}"
        try:
            plan = plans.loads(record.plan_text, where)
            plans.validate(plan, self.layout_info, source=where)
        except plans.PlanError as exc:
            self.notify(exc.problems[0], title=f"plan not loaded: it does not fit {self.source.name}",
                        severity="error", timeout=12)
            return
        self.set_plan(replace(plan, sampling=plans.Sampling()))  # the form holds the sampling
        form = self.query_one(SamplingForm)
        form.set_prompt(record.prompt)
        form.set_values(resolve_settings(self.source.defaults, record.sampling))
        self.notify(f"loaded the plan, prompt and settings of {where} (u undoes the plan)", timeout=4)

    async def on_sampling_form_submitted(self, _message: SamplingForm.Submitted) -> None:
        await self.action_run()

    async def on_layer_grid_run_requested(self, _message: LayerGrid.RunRequested) -> None:
        await self.action_run()

    def action_edit_prompt(self) -> None:
        self.query_one(SamplingForm).edit_prompt()

    # ---------------------------------------------------------------------------------- files

    def _plan_to_save(self, name: str | None) -> plans.Plan:
        form = self.query_one(SamplingForm)
        sampling = replace(form.sampling(), prompt=form.prompt or None)
        return replace(self.plan, name=name, model=self.source.name, sampling=sampling)

    def _save(self, name: str, *, overwrite: bool = False) -> None:
        """Save the plan, with the form's prompt and sampling, as `name` in the plans folder. A file there
        holding a different plan is never replaced silently: a dialog offers a free name, overwriting, or
        nothing. Saving the same plan again just saves."""
        from dit_explore.tui.screens.dialogs import ConfirmDialog, free_name, how_it_differs

        try:
            plan = self._plan_to_save(name)
        except ValueError as exc:
            self.notify(f"cannot save: {exc}", severity="error")
            return
        path = self.plans_dir / f"{slug(name)}{plans.PLAN_SUFFIX}"
        differs = None if overwrite else how_it_differs(path, plan)
        if differs is not None:
            other = free_name(self.plans_dir, name, plan)

            def answer(choice: str | None) -> None:
                if choice == "overwrite":
                    self._save(name, overwrite=True)
                elif choice == "new-name":
                    self._save(other)

            self.push_screen(ConfirmDialog(
                f"{path.name} exists", f"It holds a different plan ({differs}).",
                [("new-name", f"save under a new name: {slug(other)}{plans.PLAN_SUFFIX}"),
                 ("overwrite", f"overwrite {path.name}"), ("cancel", "cancel (escape)")]), answer)
            return
        try:
            plans.save(plan, path)
        except (OSError, plans.PlanError) as exc:
            self.notify(f"cannot save: {exc}", severity="error")
            return
        self.query_one(PlanBar).mark_saved(replace(self.plan, name=name), path.name)
        self.set_plan(replace(self.plan, name=name))
        self.notify(str(path), title="plan saved", timeout=6)

    def action_save(self) -> None:
        name = self.plan.name or f"{self.source.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._save(name)

    def action_save_as(self) -> None:
        def check(value: str) -> str | None:
            if len(value) > plans.MAX_NAME:
                return f"at most {plans.MAX_NAME} characters (this is {len(value)})"
            return None if slug(value) != "plan" or value.strip().lower() == "plan" else "give the plan a name"

        self.push_screen(AskDialog("Save plan as (name):", self.plan.name or "", check=check),
                         lambda name: self._save(name) if name else None)

    def action_open(self) -> None:
        from dit_explore.engine.core.study import shipped_plans_dir
        from dit_explore.tui.session import SWEEPS

        self.push_screen(OpenDialog([self.plans_dir, shipped_plans_dir()], self.source.name, self.layout_info,
                                    sweeps=self.session.runs_dir / SWEEPS), self._open)

    def _open(self, path: str | None) -> None:
        if not path:
            return
        if Path(path).is_dir():  # a sweep's folder: its importance on the grid
            self._load_sweep(Path(path))
            return
        if Path(path).suffix.lower() == ".png" and Path(path).is_file():
            self.query_one(ImagePane).show_file(Path(path))  # its image (and its run's baseline), plan or not
        try:
            plan = plans.load(path)
        except plans.PlanError as exc:
            self.notify(str(exc), title="cannot open plan", severity="error", timeout=15)
            return
        name = Path(path).name
        try:
            plans.validate(plan, self.layout_info, source=name)
        except plans.PlanError as exc:
            whose = f"a plan for {plan.model}" if plan.model and plan.model != self.source.name else "the plan"
            self.notify("\n".join(exc.problems), title=f"cannot open {name}: {whose} does not fit {self.source.name}",
                        severity="error", timeout=15)
            return
        if plan.model and plan.model != self.source.name:
            self.notify(f"{path} was written for {plan.model}", severity="warning")
        self.query_one(PlanBar).mark_saved(plan, name)
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
        if self.plan.orders or self.plan.step_orders:
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
        yield SystemCommand("analysis: Importance sweep", "leave each block out in turn; the grid shades what each costs",
                            lambda: self.run_action("sweep"))
        if self.query_one(LayerGrid).importance is not None:
            yield SystemCommand("analysis: Toggle importance overlay", "the sweep's costs or the group colors",
                                self.action_toggle_importance)
            yield SystemCommand("analysis: Show sweep plot", "the sweep's plot, then its contact sheet",
                                self.action_sweep_images)
        if self.session.busy:
            yield SystemCommand("engine: Cancel run", "stop the running job", lambda: self.run_action("cancel"))
        yield SystemCommand("engine: Restart", "stop the engine process and start a fresh one",
                            lambda: self.run_action("restart_engine"))
        yield SystemCommand("history: Show runs", "every run, this session's and earlier ones; enter loads one back",
                            lambda: self.run_action("history"))
        yield SystemCommand("file: Save plan", f"save to {self.plans_dir}", self.action_save)
        yield SystemCommand("file: Save plan as…", "save under a name you choose", self.action_save_as)
        yield SystemCommand("file: Open plan…", "open a .plan.toml, a dit-explore PNG or a sweep folder", self.action_open)
        yield SystemCommand("help: Keys", "every key and what the grid shows", self.action_help)
