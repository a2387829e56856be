"""The explorer's session with the engine: job state and scheduling, without a widget.

The app draws; this object decides. It owns the engine client (one per engine process, started and
restarted here), the job ids (they keep increasing across engine restarts, so two runs never share an
id), the run records and their status, the run that waits for an engine to start, the similarity
analysis and the policy around it:

- when the model is ready and no analysis is known, analyze (the built-in prompts; cached on disk);
- a run pre-empts an analysis in flight (latest wins); when a run ends well and the analysis is still
  missing, ask again;
- a run entered while the engine starts or loads waits for its hello, then goes;
- a run replaced by a newer one ends as superseded (the engine's `done` says so), a run under a crashed
  engine as crashed;
- a sweep (the importance sweep, `skip-each` on the form's prompt and settings) is a job like a run: it
  waits for an engine as a run does, pre-empts an analysis, is cancelled by the same key, and writes its
  folder under `<runs>/sweeps/`; its progress is items done, and how it ended is a `SweepEnded`.

It turns the engine's typed events into Textual messages (below) posted through `post`; the app reacts
by drawing. Nothing here needs a running app or engine: tests feed it scripted events
(tests/tui/test_session.py). Every failure while handling an event becomes a `Notice`, never an
exception that takes the interface down.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from PIL import Image
from textual.message import Message

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.devices import QUANTIZED
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.protocol import EngineState, Event, Role, Status
from dit_explore.engine.core.runs import claim_folder, mark_ended
from dit_explore.engine.core.sampling import BlockRuns, Timing
from dit_explore.engine.core.similarity import SimilarityResult
from dit_explore.engine.core.text import shown
from dit_explore.tui.client import EngineError
from dit_explore.tui.metrics import Difference, difference


class Engine(Protocol):
    """What the session needs of an engine client (tui.client.EngineClient; tests pass stand-ins)."""

    state: EngineState
    log_path: Path
    hello: protocol.Hello | None

    @property
    def alive(self) -> bool: ...

    async def start(self, timeout: float = ...) -> protocol.Hello: ...
    def events(self) -> AsyncIterator[Event]: ...
    async def submit(self, request: protocol.Run | protocol.Analyze | protocol.Sweep) -> int: ...
    async def cancel(self, job: int | None = ...) -> None: ...
    async def shutdown(self, timeout: float = ...) -> int | None: ...


@dataclass
class RunRecord:
    """One run of the session, as the TUI keeps it (the engine writes the same to `path`)."""

    job: int
    label: str
    started: str  # HH:MM:SS (a run of an earlier day: "Nov 26 12:30")
    plan_text: str
    prompt: str
    status: Status = Status.RUNNING
    path: Path | None = None
    sampling: plans.Sampling = field(default_factory=plans.Sampling)  # the form's values (prompt unset)
    past: bool = False  # read back from the runs folder (an earlier session): images load when chosen
    image: Image.Image | None = None
    baseline: Image.Image | None = None
    timing: Timing | None = None
    baseline_timing: Timing | None = None
    block_runs: BlockRuns | None = None
    difference: Difference | None = None  # computed once, when both images are there
    speed: protocol.Speed | None = None  # plan against full model, timed side by side after the images


@dataclass
class SweepRecord:
    """The explorer's sweep in flight (or the last one), as the session keeps it."""

    job: int
    kind: str
    prompt: str
    path: Path  # its folder (the engine writes it)
    status: Status = Status.RUNNING
    done: int = 0  # items finished
    total: int = 0  # items in all (known from the first progress)
    label: str = ""  # the item last finished


# ------------------------------------------------------------------------------------------ messages


class StateShown(Message):
    """The engine's state, in words, with a style (`yellow`, `green`, `bold red`, or none); with `since`
    (time.monotonic()), the seconds since then are shown after the words and keep counting."""

    def __init__(self, text: str, style: str = "", since: float | None = None) -> None:
        super().__init__()
        self.text = text
        self.style = style
        self.since = since


class ProgressShown(Message):
    """Progress of the work in flight: `total` None is indeterminate, 0 hides the bar."""

    def __init__(self, done: float, total: float | None) -> None:
        super().__init__()
        self.done = done
        self.total = total


class PreviewShown(Message):
    def __init__(self, image: Image.Image, role: Role, step: int, steps: int, job: int | None = None) -> None:
        super().__init__()
        self.job = job
        self.image = image
        self.role = role
        self.step = step
        self.steps = steps


class RecordChanged(Message):
    """A run record is new (`added`) or changed; `show`: its images or timing changed, draw them."""

    def __init__(self, record: RunRecord, *, added: bool = False, show: bool = False) -> None:
        super().__init__()
        self.record = record
        self.added = added
        self.show = show


class LayoutChanged(Message):
    """The engine's model has other stacks than the app drew (e.g. after a restart on a changed folder)."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout = layout


class AnalysisLanded(Message):
    def __init__(self, result: SimilarityResult, cached: bool) -> None:
        super().__init__()
        self.result = result
        self.cached = cached


class SweepEnded(Message):
    """The sweep ended (`record.status` says how; `ok`: its results are in `record.path`)."""

    def __init__(self, record: SweepRecord) -> None:
        super().__init__()
        self.record = record


class Notice(Message):
    """Something to tell the user (a toast)."""

    def __init__(self, text: str, *, title: str = "", severity: str = "information", timeout: float = 5) -> None:
        super().__init__()
        self.text = text
        self.title = title
        self.severity = severity
        self.timeout = timeout


# ------------------------------------------------------------------------------------------ session


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "plan"


@dataclass(frozen=True)
class RunWish:
    """A run the user asked for, before it has a job id."""

    plan: plans.Plan  # without sampling: the form's `sampling` is the one source of it
    prompt: str
    sampling: plans.Sampling
    label: str


@dataclass(frozen=True)
class SweepWish:
    """A sweep the user asked for (of the full model: the plan plays no part), before it has a job id."""

    prompt: str
    sampling: plans.Sampling
    kind: str = "skip-each"


SWEEPS = "sweeps"  # the explorer's sweeps go in <runs>/sweeps/<time>-<job>-<kind>/


class Session:
    def __init__(
        self,
        layout: Layout,
        engine_factory: Callable[[], Engine],
        post: Callable[[Message], object],
        *,
        runs_dir: Path,
        ensure_engine: Callable[[], object],
    ) -> None:
        self.layout = layout
        self.client: Engine | None = None
        self.records: dict[int, RunRecord] = {}
        self.similarity: SimilarityResult | None = None
        self.runs_dir = runs_dir
        self._engine_factory = engine_factory
        self._post = post
        self._ensure_engine = ensure_engine  # starts `follow` (as a worker, in the app)
        self._job_ids = itertools.count(1)
        self._latest_job = 0
        self._pending: RunWish | SweepWish | None = None
        self.sweep_record: SweepRecord | None = None
        self._starting = False  # an engine process is being started (one at a time: no orphans)
        self._stop_reason: str | None = None  # why the current engine stopped, as it said (fatal error)
        self.cannot_start: str | None = None  # the last engine could not load the model: why
        self._loaded = False  # the current engine said ready
        self.ready: protocol.Ready | None = None  # what the engine said when it was ready (device, memory)
        self._analysis_job: int | None = None
        self._analysis_prompts: tuple[str, ...] | None = None  # None: the built-in prompt set
        self._analysis_sampling = plans.Sampling()

    # ------------------------------------------------------------------------------- engine

    @property
    def state(self) -> EngineState:
        return self.client.state if self.client is not None else EngineState.STOPPED

    @property
    def busy(self) -> bool:
        return self.client is not None and self.client.alive and self.state in (EngineState.BUSY,
                                                                                 EngineState.UNRESPONSIVE)

    async def follow(self) -> None:
        """One engine: start it, handle its events until it stops or crashes."""
        self._end_running(Status.CANCELLED)  # runs of an engine that was stopped or restarted never end
        client = self._engine_factory()
        self.client = client
        self._starting = True
        self._stop_reason = None
        self._loaded = False
        self._post(StateShown("starting", since=time.monotonic()))
        try:
            await client.start()
        except EngineError as exc:
            self._post(StateShown(f"failed to start: {exc}", "bold red"))
            self._post(Notice(str(exc), title="engine", severity="error", timeout=15))
            return
        finally:
            self._starting = False
        async for event in client.events():
            await self.handle(event)

    async def restart(self) -> None:
        """Stop the engine and start a fresh one (also after it could not load the model)."""
        await self.shutdown()
        self.cannot_start = None
        self._starting = True
        self._ensure_engine()

    async def shutdown(self) -> None:
        if self.client is not None:
            await self.client.shutdown()

    async def handle(self, event: Event) -> None:
        """One event from the engine (or its client); any failure becomes a notice."""
        try:
            await self._handle(event)
        except Exception as exc:  # noqa: BLE001 - the one funnel: a bad event never takes the app down
            self._post(Notice(f"could not handle the engine's {event.TYPE} event: {type(exc).__name__}: {exc}",
                              title="internal error", severity="error", timeout=15))

    async def _handle(self, event: Event) -> None:
        match event:
            case protocol.Hello():
                if event.layout != self.layout:
                    self.layout = event.layout
                    self._post(LayoutChanged(event.layout))
                self._post(StateShown("loading the model…", "yellow"))
                await self._submit_pending()
            case protocol.Loading():
                pct = f" {event.fraction * 100:.0f}%" if event.fraction is not None else ""
                self._post(StateShown(f"loading{pct} — {event.stage}", "yellow",
                                      since=time.monotonic() - event.elapsed))
                self._post(ProgressShown(event.fraction or 0, 1 if event.fraction is not None else None))
            case protocol.Ready():
                self._loaded = True
                self.ready = event
                kind = " · random weights" if event.random_weights else ""
                kind += f" · {QUANTIZED.get(event.quantization, event.quantization)}" if event.quantization else ""
                kind += f" · memory {event.placement.split()[0]}" if event.placement else ""  # the setting's name
                self._post(StateShown(f"ready on {event.device} ({event.dtype}{kind}), loaded in "
                                      f"{event.load_seconds:.1f} s", "green"))
                self._post(ProgressShown(0, 0))
                if self.similarity is None:
                    self._analysis_prompts = None  # the built-in prompt set; cached on disk after the first time
                    await self.submit_analysis()
            case protocol.Progress():
                await self._on_progress(event)
            case protocol.Image():
                await self._on_image(event)
            case protocol.Speed():
                record = self.records.get(event.job)
                if record is not None:
                    record.speed = event
                    self._post(RecordChanged(record, show=True))
            case protocol.Analysis():
                self.similarity = event.result
                self._post(AnalysisLanded(event.result, event.cached))
            case protocol.Done() if self.sweep_record is not None and event.job == self.sweep_record.job:
                await self._on_sweep_done(event, self.sweep_record)
            case protocol.Done():
                await self._on_done(event)
            case protocol.Error():
                self._post(Notice(f"{event.message}\nlog: {event.log}", title="engine error", severity="error",
                                  timeout=15))
                if event.fatal:
                    self._stop_reason = event.message
                    if not self._loaded:
                        # It failed before the model was ready (the model cannot load here): another engine
                        # would fail the same way, so enter does not start one; the palette's restart does.
                        self.cannot_start = event.message
                    self._post(StateShown(f"stopped: {event.message}", "bold red"))
            case protocol.Crashed():
                reason = self._stop_reason or f"exit code {event.exit_code}"
                hint = "engine: Restart in the palette (ctrl+p) tries again" if self.cannot_start else \
                    "enter restarts it"
                self._post(StateShown(f"stopped: {reason} — {hint}" if self._stop_reason else
                                      f"crashed (exit code {event.exit_code}) — {hint}", "bold red"))
                self._post(ProgressShown(0, 0))
                self._end_running(Status.CRASHED)
                tail = event.log_tail.strip().splitlines()
                last = f"\n{tail[-1]}" if tail else ""
                self._post(Notice(f"the engine exited with code {event.exit_code}{last}\nlog: {event.log}",
                                  title="engine crashed", severity="error", timeout=20))
            case protocol.Unresponsive():
                self._post(StateShown(f"unresponsive — no answer for {event.seconds:.0f} s", "bold red"))
            case protocol.Responsive():
                self._post(StateShown("responsive again", "green"))
            case protocol.Stopped():
                self._post(StateShown("stopped"))
                self._end_running(Status.CANCELLED)

    def _end_running(self, status: Status) -> None:
        """The engine is gone: its runs end with `status` (else they stay running, and block the analysis),
        on disk too: a run.json that still says running says `status` (the engine died before it could)."""
        for record in self.records.values():
            if record.status == Status.RUNNING:
                record.status = status
                if record.path is not None and not record.past:
                    mark_ended(record.path, status)
                self._post(RecordChanged(record))
        sweep = self.sweep_record
        if sweep is not None and sweep.status == Status.RUNNING:
            sweep.status = status
            self._post(SweepEnded(sweep))

    async def _on_progress(self, event: protocol.Progress) -> None:
        if event.role == Role.ANALYZE:
            self._post(ProgressShown(event.index * event.steps + event.step, event.prompts * event.steps))
            self._post(StateShown(f"analyzing block similarity — prompt {event.index + 1}/{event.prompts}, "
                                  f"step {event.step}/{event.steps}", "yellow"))
            return
        if event.role == Role.SWEEP:
            sweep = self.sweep_record
            if sweep is not None and sweep.job == event.job:
                sweep.done, sweep.total, sweep.label = event.step, event.steps, event.label or ""
            self._post(ProgressShown(event.step, event.steps))
            self._post(StateShown(f"sweep {event.step}/{event.steps}: {event.label or '…'} (escape cancels)",
                                  "yellow", since=time.monotonic() - event.elapsed))
            return
        record = self.records.get(event.job)
        phases = 2 if event.role == Role.BASELINE or (record is not None and record.baseline is None) else 1
        done = event.step + (event.steps if event.role == Role.BASELINE else 0)
        self._post(ProgressShown(done, event.steps * phases))
        self._post(StateShown(f"busy — {event.role} step {event.step}/{event.steps} ({event.elapsed:.1f} s)",
                              "yellow"))
        if event.preview:
            self._post(PreviewShown(_open_png(event.preview), event.role, event.step, event.steps, event.job))

    async def _on_image(self, event: protocol.Image) -> None:
        record = self.records.get(event.job)
        if record is None:
            return
        image = await asyncio.to_thread(_open_png, event.png)
        if event.role == Role.PLAN:
            record.image, record.timing, record.block_runs = image, event.timing, event.block_runs
        else:
            record.baseline, record.baseline_timing = image, event.timing
        if record.image is not None and record.baseline is not None:
            record.difference = await asyncio.to_thread(difference, record.image, record.baseline)
        self._post(RecordChanged(record, show=True))

    async def _on_done(self, event: protocol.Done) -> None:
        record = self.records.get(event.job)
        if record is not None:
            record.status = event.status
            if event.path is not None and record.path is not None:
                record.path = Path(event.path)  # where the engine wrote it (another name if this one was taken)
            self._post(RecordChanged(record))
        if event.job != self._latest_job:
            return  # a job the latest one superseded: only its record changes
        if event.status == Status.CANCELLED:
            self._post(Notice("run cancelled", timeout=3))
        is_analysis = event.job == self._analysis_job
        if self.state == EngineState.READY:
            what = "analysis" if is_analysis else "last run"
            self._post(StateShown(f"ready — {what} {event.status} in {event.seconds:.2f} s", "green"))
        self._post(ProgressShown(0, 0))
        if is_analysis:
            self._analysis_job = None
        elif self.similarity is None and self._analysis_job is None and event.status == Status.OK:
            await self.submit_analysis()  # the analysis a run pre-empted: ask again

    async def _on_sweep_done(self, event: protocol.Done, sweep: SweepRecord) -> None:
        sweep.status = event.status
        sweep.done = event.images or sweep.done
        if event.path is not None:
            sweep.path = Path(event.path)
        self._post(SweepEnded(sweep))
        if event.job != self._latest_job:
            return  # superseded by a newer job, which shows its own state
        if self.state == EngineState.READY:
            self._post(StateShown(f"ready — sweep {event.status} in {event.seconds:.1f} s", "green"))
        self._post(ProgressShown(0, 0))
        if self.similarity is None and self._analysis_job is None and event.status == Status.OK:
            await self.submit_analysis()  # the analysis the sweep pre-empted: ask again

    # --------------------------------------------------------------------------------- jobs

    async def run(self, wish: RunWish | SweepWish) -> None:
        """Run a plan and its baseline, or a sweep; starts an engine first if there is none (the job waits
        for it)."""
        self._pending = wish
        client = self.client
        if self._starting:
            return  # an engine is on its way: the pending run goes on its hello
        if self.cannot_start is not None and (client is None or not client.alive):
            self._pending = None
            self._post(Notice(f"the engine cannot start: {self.cannot_start}\n(fix it, then engine: Restart in "
                              "the palette, ctrl+p)", title="not started", severity="error", timeout=10))
            return
        if client is None or not client.alive or client.state in (EngineState.CRASHED, EngineState.STOPPED):
            self._post(Notice("starting a new engine", timeout=3))
            self._starting = True  # until follow() has it started (the worker starts a moment later)
            self._ensure_engine()  # the pending run goes on its hello
            return
        await self._submit_pending()

    async def _submit_pending(self) -> None:
        client, wish = self.client, self._pending
        if client is None or wish is None or client.hello is None or not client.alive:
            return
        self._pending = None
        self._analysis_job = None  # a run pre-empts an analysis in flight; it is asked again after
        if isinstance(wish, SweepWish):
            await self._submit_sweep(client, wish)
            return
        job = next(self._job_ids)
        # The run's folder is claimed here (os.mkdir: unique even with another explorer on this runs folder,
        # or an enter within the same second: then it gets a suffix, -2, ...); the engine writes into it.
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{job:03d}-{slug(wish.label)}"
        try:
            out_dir = claim_folder((self.runs_dir / name).resolve(), accept_empty=False)
        except OSError as exc:
            self._post(Notice(f"cannot make a folder for the run in {shown(self.runs_dir)}: {exc.strerror or exc}",
                              title="run not started", severity="error", timeout=10))
            return
        plan_text = plans.dumps(replace(wish.plan, sampling=plans.Sampling()))
        request = protocol.Run(job=job, plan=plan_text, prompts=(wish.prompt,), sampling=wish.sampling,
                               out_dir=str(out_dir), plan_source=wish.plan.name or "plan")
        if not await self._send(client, request, out_dir):
            return
        self._latest_job = job  # a run in flight is superseded: its `done` says so
        record = RunRecord(job=job, label=wish.label, started=time.strftime("%H:%M:%S"), plan_text=plan_text,
                           prompt=wish.prompt, path=out_dir, sampling=wish.sampling)
        self.records[job] = record
        self._post(RecordChanged(record, added=True))
        if self._loaded:
            self._post(StateShown("busy — submitted", "yellow"))
        else:  # the loading progress stays; the run starts when the model is ready
            self._post(Notice("queued: the run starts when the model is ready", timeout=4))

    async def _send(self, client: Engine, request: protocol.Run | protocol.Sweep, out_dir: Path) -> bool:
        """Submit a job whose folder was just claimed; if the engine refuses it, the empty folder goes and
        the refusal is the notice."""
        try:
            await client.submit(request)
        except EngineError as exc:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # claimed, never written
            self._post(Notice(str(exc), title="engine", severity="error"))
            return False
        return True

    async def _submit_sweep(self, client: Engine, wish: SweepWish) -> None:
        job = next(self._job_ids)
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{job:03d}-{wish.kind}"
        try:
            out_dir = claim_folder((self.runs_dir / SWEEPS / name).resolve(), accept_empty=False)
        except OSError as exc:
            self._post(Notice(f"cannot make a folder for the sweep in {shown(self.runs_dir / SWEEPS)}: "
                              f"{exc.strerror or exc}", title="sweep not started", severity="error", timeout=10))
            return
        request = protocol.Sweep(job=job, kind=wish.kind, prompt=wish.prompt, sampling=wish.sampling,
                                 out_dir=str(out_dir))
        if not await self._send(client, request, out_dir):
            return
        self._latest_job = job
        self.sweep_record = SweepRecord(job=job, kind=wish.kind, prompt=wish.prompt, path=out_dir)
        if self._loaded:
            self._post(StateShown(f"sweep {wish.kind} submitted", "yellow"))
        else:
            self._post(Notice("queued: the sweep starts when the model is ready", timeout=4))

    async def load_past(self, model: str, limit: int = 200) -> list[RunRecord]:
        """Read back `model`'s runs of earlier sessions from the runs folder (their run.json only: images
        load when a run is chosen) as records with job ids below zero, and return the new ones, oldest
        first (nothing is posted: they are not this session's news). A run.json that still says running
        was left by an engine that is gone: that run ends as crashed (the history reads "interrupted")."""
        from dit_explore.engine.core.runs import list_runs

        found = await asyncio.to_thread(list_runs, self.runs_dir, model, limit)
        known = {record.path for record in self.records.values()}
        job = min(0, *self.records) if self.records else 0
        today = time.strftime("%Y%m%d")
        added: list[RunRecord] = []
        for run in found:
            if run.path in known:
                continue
            job -= 1
            when = time.localtime(run.started)
            started = time.strftime("%H:%M:%S" if time.strftime("%Y%m%d", when) == today else "%b %d %H:%M", when)
            status = Status.CRASHED if run.status == Status.RUNNING else run.status
            record = RunRecord(job=job, label=run.label, started=started, plan_text=run.plan_text, prompt=run.prompt,
                               status=status, path=run.path, timing=run.timing, block_runs=run.block_runs,
                               sampling=run.sampling, past=True, speed=run.speed)
            added.append(record)
        ours = dict(self.records)  # records stay in time order: earlier sessions' first
        self.records.clear()
        self.records.update({record.job: record for record in added})
        self.records.update(ours)
        return added

    def analyze_prompt(self, prompt: str, sampling: plans.Sampling) -> None:
        """The next analysis measures this prompt (the user asked); the current result is dropped."""
        self._analysis_prompts = (prompt,)
        self._analysis_sampling = sampling
        self.similarity = None

    async def submit_analysis(self) -> None:
        """Analyze now, unless a run waits or runs (an analysis would supersede it; its `done` asks again)."""
        client = self.client
        if client is None or not client.alive or client.hello is None or self._pending is not None:
            return
        if client.state == EngineState.BUSY or any(r.status == Status.RUNNING for r in self.records.values()):
            return
        if self.sweep_record is not None and self.sweep_record.status == Status.RUNNING:
            return
        job = next(self._job_ids)
        try:
            await client.submit(protocol.Analyze(job=job, prompts=self._analysis_prompts,
                                                 sampling=self._analysis_sampling))
        except EngineError as exc:
            self._post(Notice(f"analysis: {exc}", severity="error"))
            return
        self._latest_job = self._analysis_job = job

    async def cancel(self) -> bool:
        """Cancel the job in flight; False if nothing runs."""
        if not self.busy:
            return False
        assert self.client is not None
        await self.client.cancel()
        return True


def _open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
