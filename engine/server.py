"""The engine process: holds the model on the device and serves requests over stdin/stdout.

Started by the TUI's engine client (tui/client.py) as `python -m dit_explore.engine MODEL ...`.
stdout carries protocol frames only (any stray print goes to stderr, the log); stdin carries requests.
A reader thread answers `ping` at once and turns `cancel`/`shutdown`/a newer `run` into flags that the
generating main thread checks between two block executions. End of stdin (the TUI died or closed it),
SIGTERM and SIGHUP all end the process cleanly, so no orphan keeps holding GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Role, Status
from dit_explore.engine.core.resolve import ModelError, ModelSource, resolve
from dit_explore.engine.core.sampling import BlockRuns, Settings, Timing, check_prompts, resolve_settings
from dit_explore.engine.core.text import shown

log = logging.getLogger("dit-explore.engine")
BASELINE_CACHE_SIZE = 16
SPEED_CALLS = 3  # timed transformer calls of plan and full model each, after a run (engine/timing.py),
SPEED_SECONDS = 0.5  # and more while they took less than this altogether (cheap calls are noisy)
EXIT_GRACE_SECONDS = 10.0  # after a fatal failure of the request reader: the longest the process lingers
MESSAGE_LIMIT = 2000  # characters of an error event's message
ENDED_JOBS = 1024  # ids of ended jobs remembered (a cancel of one of them is no error: its `done` was sent)


class RequestError(ValueError):
    """A request that cannot be served; reported as an `error` event, the engine carries on."""


class MemoryRefusal(RequestError):
    """A request that cannot fit in the device's memory (engine/core/memory.py); refused unstarted."""


class ResultsError(RuntimeError):
    """Writing a run's results failed (a full disk, a folder gone): the run's error, one line."""


class SweepError(RuntimeError):
    """A sweep that cannot go on (its folder taken, a write that failed): the sweep's error, one line."""


@contextlib.contextmanager
def writing_results(out: Path | None) -> Iterator[None]:
    """Within: an OSError (ENOSPC, EACCES, ...) is a ResultsError naming the run directory."""
    try:
        yield
    except OSError as exc:
        raise ResultsError(f"writing results to {shown(out)} failed: {shown(exc.strerror or exc)}") from exc


@dataclass
class Job:
    id: int
    plan: plans.Plan
    prompts: tuple[str, ...]
    settings: Settings
    baseline: bool = True
    previews: bool = True
    out_dir: Path | None = None
    plan_source: str | None = None
    analysis: bool = False  # a similarity analysis, not a run
    groups: int | None = None  # analysis: a fixed number of groups
    use_cache: bool = True  # analysis: answer from the on-disk cache when it has this analysis
    sweep: str | None = None  # a sweep of this kind (engine/sweep.py) into out_dir, not a run
    items: int = 0  # sweep: items finished so far
    cancelled: threading.Event = field(default_factory=threading.Event)
    superseded: bool = False  # cancelled because a newer request replaced it

    @property
    def kind(self) -> str:
        """The request it came from, in words: run, analyze or sweep."""
        return "analyze" if self.analysis else "sweep" if self.sweep is not None else "run"


@dataclass(frozen=True)
class Rendered:
    """One finished image as the engine delivers it (and keeps baselines)."""

    png: bytes
    timing: Timing
    block_runs: BlockRuns


def _shown(message: dict[str, Any], limit: int = 2000) -> str:
    """A request as logged: its JSON, cut at `limit` characters (a request can be megabytes), control
    characters escaped."""
    import json

    try:
        text = json.dumps(message, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(message)
        except (ValueError, RecursionError):  # nested too deep, or an integer over the digit limit
            text = f"<a {type(message).__name__} that cannot be shown>"
    return shown(text, limit)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Engine:
    def __init__(self, args: argparse.Namespace, out: IO[bytes]) -> None:
        self.args = args
        self._out = out
        self._write_lock = threading.Lock()
        self._jobs = threading.Condition()
        self._pending: Job | None = None
        self._current: Job | None = None
        self._stopping = threading.Event()
        self._state = EngineState.STARTING
        self.source: ModelSource | None = None
        self.generator: Any = None  # engine.generate.Generator once loaded
        self._originals: dict[str, Any] = {}
        self._baselines: OrderedDict[tuple[Any, ...], Rendered] = OrderedDict()
        self._ended: deque[int] = deque(maxlen=ENDED_JOBS)  # ids of jobs whose `done` was sent
        self.exit_code = 0  # what the process exits with once it stops (non-zero: the reader failed)
        self._interrupted = False  # the main thread was interrupted (once is enough)

    # ------------------------------------------------------------------------------------ output

    def send(self, event: protocol.EngineEvent) -> None:
        """Write one event. Never raises: an event that cannot be framed (too large, a value JSON cannot
        carry) goes out as a short `error` instead; a client that is gone stops the engine."""
        try:
            frame = protocol.encode(event)
        except Exception as exc:  # noqa: BLE001 - FrameTooLarge, ValueError (digit limit), RecursionError, ...
            log.error("could not send a %s event: %s: %s", event.TYPE, type(exc).__name__, shown(exc))
            job = getattr(event, "job", None)
            error = protocol.Error(job=job if isinstance(job, int) and abs(job) < 1 << 63 else None,
                                   message=f"the {event.TYPE} event could not be sent: {type(exc).__name__}: "
                                           f"{shown(exc)}", log=self.args.log)
            frame = protocol.encode(error)
        with self._write_lock:
            try:
                self._out.write(frame)
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.stop("client went away")

    def send_error(self, message: str, job: int | None = None, fatal: bool = False) -> None:
        self.send(protocol.Error(job=job, message=shown(message, MESSAGE_LIMIT), log=self.args.log, fatal=fatal))

    def send_done(self, job: int, status: Status, message: str | None = None, **fields: Any) -> None:
        self._ended.append(job)
        self.send(protocol.Done(job=job, status=status,
                                message=None if message is None else shown(message, MESSAGE_LIMIT), **fields))

    # ----------------------------------------------------------------------------------- control

    def stop(self, why: str) -> None:
        """Stop serving: cancel the running job, drop the pending one, wake the main loop."""
        if not self._stopping.is_set():
            log.info("stopping: %s", why)
        self._stopping.set()
        with self._jobs:
            if self._current is not None:
                self._current.cancelled.set()
            self._pending = None
            self._jobs.notify_all()

    def fail(self, why: str, code: int = 1) -> None:
        """The request reader cannot go on: say why (the log and a fatal `error`), stop, and exit with
        `code` — at once while loading, after the running job's next check otherwise, and within
        EXIT_GRACE_SECONDS whatever the main thread is doing: never an engine that no longer listens."""
        log.error("%s; the engine exits with code %d", why, code)
        self.exit_code = code
        with contextlib.suppress(Exception):
            self.send_error(why, fatal=True)
        self.stop(why)

        def linger_no_longer() -> None:
            log.error("the engine did not stop within %.0f s; exiting with code %d", EXIT_GRACE_SECONDS, code)
            logging.shutdown()
            os._exit(code)

        timer = threading.Timer(EXIT_GRACE_SECONDS, linger_no_longer)
        timer.daemon = True
        timer.start()
        self._interrupt_loading()

    def _interrupt_loading(self) -> None:
        """Loading runs in the main thread and checks no flags: interrupt it like a SIGTERM would, so an
        engine whose client is gone never finishes loading 12B parameters onto the GPU for nobody."""
        if self._state in (EngineState.STARTING, EngineState.LOADING) and not self._interrupted:
            self._interrupted = True
            import _thread

            _thread.interrupt_main(signal.SIGTERM)

    def check(self, job: Job) -> Callable[[], None]:
        from dit_explore.engine.executor import Cancelled

        def check() -> None:
            if job.cancelled.is_set():
                raise Cancelled()

        return check

    # ------------------------------------------------------------------------------------ reader

    def read_requests(self, stream: IO[bytes]) -> None:
        """The reader thread. A bad frame or request is an `error` (and the engine reads on); a reader that
        cannot go on (stdin fails, or a bug here) ends the process with a log line and exit code 1."""
        try:
            self._read_requests(stream)
        except BaseException as exc:  # noqa: BLE001 - anything that ends the reader ends the engine
            log.error("the request reader failed:\n%s", traceback.format_exc())
            self.fail(f"reading requests failed: {type(exc).__name__}: {shown(exc)}")

    def _read_requests(self, stream: IO[bytes]) -> None:
        reader = protocol.FrameReader(stream, max_binary=0)  # no request carries binary
        while not self._stopping.is_set():
            try:
                frame = reader.read_frame()
            except protocol.ProtocolError as exc:
                log.warning("bad frame: %s", exc)
                self.send_error(str(exc))
                continue
            if frame is None:
                self.stop("stdin closed")
                break
            self.serve_request(*frame)
        self._interrupt_loading()  # stopped (end of input, shutdown, a client gone): no load for nobody

    def serve_request(self, message: dict[str, Any], binary: bytes) -> None:
        """One request read: handled, or refused with an `error` (and `done` for a run or analysis) —
        whatever goes wrong in it."""
        kind = message.get("type")
        job = message.get("job") if type(message.get("job")) is int and kind in (
            protocol.Run.TYPE, protocol.Analyze.TYPE, protocol.Sweep.TYPE) else None
        try:
            self.handle(protocol.decode_request(message, binary))
            return
        except (protocol.ProtocolError, RequestError) as exc:
            problem = str(exc)
            log.warning("refused a %s request (job %s): %s; the request: %s", shown(repr(kind), 60), job,
                        shown(problem), _shown(message))
        except Exception as exc:  # noqa: BLE001 - a failure in one request must not end the reader
            problem = f"{shown(kind, 60)}: {type(exc).__name__}: {shown(exc)}"
            log.error("a %s request (job %s) failed: %s; the request: %s\n%s", shown(repr(kind), 60), job, problem,
                      _shown(message), traceback.format_exc())
        self.send_error(problem, job=job)
        if job is not None:
            self.send_done(job, Status.ERROR, problem)

    def handle(self, request: protocol.Request) -> None:
        match request:
            case protocol.Ping():
                current = self._current
                self.send(protocol.Pong(id=request.id, state=self._state, job=current.id if current else None,
                                        rss=_rss_bytes()))
            case protocol.Cancel():
                self.cancel(request.job)
            case protocol.Shutdown():
                self.stop("shutdown requested")
                self._interrupt_loading()
            case protocol.Run():
                self.submit(self.parse_run(request))
            case protocol.Analyze():
                self.submit(self.parse_analyze(request))
            case protocol.Sweep():
                self.submit(self.parse_sweep(request))

    def cancel(self, job_id: int | None) -> None:
        """Cancel the job (or, for None, what runs and waits). A job that has already ended is no error
        (its `done` was sent); one the engine never had, or nothing to cancel, is a RequestError."""
        found = False
        with self._jobs:
            if self._pending is not None and job_id in (None, self._pending.id):
                dropped, self._pending = self._pending, None
                self.send_done(dropped.id, Status.CANCELLED)
                found = True
            if self._current is not None and job_id in (None, self._current.id):
                self._current.cancelled.set()
                found = True
        if not found and (job_id is None or job_id not in self._ended):
            raise RequestError("cancel: no job is running or queued" if job_id is None else
                               f"cancel: there is no job {shown(job_id, 60)} (none runs or waits with that id)")

    def submit(self, job: Job) -> None:
        """Latest wins: a new request supersedes the one in flight and replaces any queued one."""
        with self._jobs:
            if self._pending is not None:
                self.send_done(self._pending.id, Status.SUPERSEDED)
            if self._current is not None:
                self._current.superseded = True
                self._current.cancelled.set()
            self._pending = job
            self._jobs.notify_all()

    def _settings(self, kind: str, sampling: plans.Sampling, plan: plans.Plan, where: str) -> Settings:
        """The request's sampling over the plan's over the model's defaults, checked like the CLI does."""
        source = self.source
        assert source is not None
        if sampling.prompt is not None:
            raise RequestError(f"{kind}.sampling.prompt: send prompts in 'prompts'")
        try:
            overrides = plans.check_sampling(sampling, f"{kind}.sampling.")
            settings = resolve_settings(source.defaults, plan.sampling, overrides)
            source.check_size(settings.width, settings.height)
            plans.validate_steps(plan, settings.steps, where)
            plans.validate_guidance(plan, source.layout, settings.guidance, where)
        except (plans.PlanError, ModelError) as exc:
            raise RequestError(str(exc).replace("\n", "; ")) from None
        problem = self.memory_problem(settings, analysis=kind == "analyze", when_idle=True,  # a sweep: as a run
                                      cached_spans=len(plans.cache_keys(plan)))
        if problem is not None:
            raise MemoryRefusal(f"{kind}: {problem}")
        return settings

    def memory_problem(self, settings: Settings, analysis: bool, when_idle: bool = False,
                       cached_spans: int = 0) -> str | None:
        """Why the request cannot fit in what the device has free (one line), or None. Known only once the
        model is loaded (until then every job is checked when it starts); `when_idle`: only while no job
        runs, as a running job holds memory that the new request will have once it is superseded."""
        generator = self.generator
        if generator is None or (when_idle and self._current is not None):
            return None
        from dit_explore.engine.core.memory import DEVICE_KINDS, check_request
        from dit_explore.engine.generate import dtype_name
        from dit_explore.engine.models import free_memory

        loaded = generator.loaded
        if loaded.device.type not in DEVICE_KINDS:
            return None
        available, where = free_memory(loaded.device)
        return check_request(loaded.source, settings.width, settings.height, available, loaded=True, where=where,
                             guidance=settings.guidance, dtype=dtype_name(loaded.dtype), device_kind=loaded.device.type,
                             max_sequence_length=settings.max_sequence_length, random_weights=loaded.random_weights,
                             analysis=analysis, cached_spans=cached_spans)

    def parse_analyze(self, request: protocol.Analyze) -> Job:
        from dit_explore.engine.core.catalog import analysis_prompts
        from dit_explore.engine.core.similarity import DEFAULT_PROMPTS

        if request.groups is not None and request.groups < 1:
            raise RequestError("analyze.groups: must be a positive integer or null")
        plan = plans.Plan()
        assert self.source is not None
        prompts = _prompts("analyze", request.prompts if request.prompts is not None
                           else analysis_prompts(self.source.name, DEFAULT_PROMPTS))
        return Job(request.job, plan, prompts, self._settings("analyze", request.sampling, plan, "analyze"),
                   previews=False, analysis=True, groups=request.groups, use_cache=request.use_cache)

    def parse_sweep(self, request: protocol.Sweep) -> Job:
        from dit_explore.engine.sweep import KINDS

        if request.kind not in KINDS:
            raise RequestError(f"sweep.kind: {shown(repr(request.kind), 60)} is not one of {', '.join(KINDS)}")
        prompts = _prompts("sweep", [request.prompt])
        out = Path(request.out_dir)
        if not request.out_dir or (out.exists() and not (out.is_dir() and not any(out.iterdir()))):
            raise RequestError(f"sweep.out_dir: {shown(request.out_dir, 120) or 'empty'}: must be a new or empty folder")
        plan = plans.Plan()
        return Job(request.job, plan, prompts, self._settings("sweep", request.sampling, plan, "sweep"),
                   baseline=False, previews=False, out_dir=out, sweep=request.kind)

    def parse_run(self, request: protocol.Run) -> Job:
        source = self.source
        assert source is not None
        prompts = _prompts("run", request.prompts)
        where = request.plan_source or "plan"
        try:
            plan = plans.loads(request.plan, where)
            plans.validate(plan, source.layout, where)
        except plans.PlanError as exc:
            raise RequestError(str(exc).replace("\n", "; ")) from None
        settings = self._settings("run", request.sampling, plan, where)
        return Job(request.job, plan, prompts, settings, request.baseline, request.previews,
                   Path(request.out_dir) if request.out_dir else None, request.plan_source)

    # -------------------------------------------------------------------------------------- main

    def serve(self, stdin: IO[bytes]) -> int:
        try:
            self.source = resolve(self.args.model)
        except ModelError as exc:
            self.send_error(str(exc), fatal=True)
            return 2
        source = self.source
        self.send(protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION, model=source.name, location=source.location, kind=source.kind,
            family=source.family, layout=source.layout, defaults=source.defaults,
            size_multiple=source.size_multiple, max_side=source.max_side, pid=os.getpid(), log=self.args.log,
            device=self.args.device, dtype=self.args.dtype, random_weights=self.args.random_weights,
            memory=self.args.memory))
        threading.Thread(target=self.read_requests, args=(stdin,), name="requests", daemon=True).start()
        self._state = EngineState.LOADING
        if not self.load():
            return 2
        self._state = EngineState.READY
        while True:
            with self._jobs:
                while self._pending is None and not self._stopping.is_set():
                    self._jobs.wait()
                if self._stopping.is_set():
                    return self.exit_code
                job = self._pending
                assert job is not None
                self._pending, self._current = None, job
            self._state = EngineState.BUSY
            try:
                self.execute(job)
            except Exception as exc:  # noqa: BLE001 - execute reports its own failures; this is its last net
                log.error("job %s: reporting its end failed:\n%s", job.id, traceback.format_exc())
                self.send_error(f"job {job.id} failed: {type(exc).__name__}: {shown(exc)}", job=job.id)
                self.send_done(job.id, Status.ERROR, f"{type(exc).__name__}: {shown(exc)}",
                               blocks_restored=False)
            finally:
                with self._jobs:
                    self._current = None
                self._state = EngineState.READY

    def load(self) -> bool:
        assert self.source is not None
        started = time.perf_counter()

        def progress(stage: str, fraction: float | None = None) -> None:
            self.send(protocol.Loading(stage=stage, fraction=fraction, elapsed=time.perf_counter() - started))

        progress("starting torch")
        from dit_explore.engine.core.sampling import resolve_settings
        from dit_explore.engine.generate import Generator, dtype_name
        from dit_explore.engine.models import load, pick_device, pick_dtype, plan_memory

        try:
            device = pick_device(self.args.device)
            dtype = pick_dtype(self.args.dtype, device)
            if device.type == "cpu":
                _leave_a_core_to_the_client()
            # Planned for an image at the model's default size, before any weight loads.
            placement = plan_memory(self.source, resolve_settings(self.source.defaults), device, dtype_name(dtype),
                                    self.args.memory, random_weights=self.args.random_weights,
                                    quantization=self.args.quantize)
            loaded = load(self.source, device, dtype, random_weights=self.args.random_weights,
                          compile=self.args.compile, quantize=self.args.quantize, placement=placement,
                          on_status=progress)
        except ModelError as exc:
            self.send_error(str(exc), fatal=True)
            return False
        except Exception as exc:
            log.exception("loading failed")
            self.send_error(f"loading {self.source.name} failed: {type(exc).__name__}: {exc}", fatal=True)
            return False
        self.generator = Generator(loaded, on_warning=lambda message: self.send_error(message))
        self._originals = {s.attr: getattr(loaded.transformer, s.attr) for s in self.source.layout.stacks}
        from dit_explore.engine.models import free_memory

        self.send(protocol.Ready(device=str(device), dtype=dtype_name(dtype), load_seconds=loaded.load_seconds,
                                 random_weights=loaded.random_weights, available=free_memory(device)[0],
                                 quantization=loaded.quantization,
                                 placement=loaded.offloaded))
        return True

    # ----------------------------------------------------------------------------------- running

    def execute(self, job: Job) -> None:
        """Run one job and send its `done` (after an `error` when it failed). Whatever the job does —
        out of memory, NaN latents, a full disk under its run directory — is the job's error; the engine
        serves on."""
        import torch

        from dit_explore.engine.core.runs import LiveRun
        from dit_explore.engine.executor import Cancelled
        from dit_explore.engine.generate import NonFiniteError, run_record

        started = time.perf_counter()
        status, message = Status.OK, None
        live = None
        count = 0
        try:
            problem = self.memory_problem(job.settings, job.analysis, cached_spans=len(plans.cache_keys(job.plan)))
            if problem is not None:
                raise MemoryRefusal(f"{job.kind}: {problem}")
            if job.analysis:
                self.analyze(job)
                count = len(job.prompts)
            elif job.sweep is not None:
                self.sweep(job)
            else:
                if job.out_dir is not None:
                    record = run_record(self.generator.loaded, job.plan, job.plan_source, list(job.prompts),
                                        job.settings)
                    with writing_results(job.out_dir):
                        live = LiveRun(job.out_dir, {**record, "timing": {"per_image": []}, "block_runs": None})
                for index, prompt in enumerate(job.prompts):
                    self.render(job, index, prompt, live)
                    count += 1
        except Cancelled:
            status = Status.SUPERSEDED if job.superseded else Status.CANCELLED
        except MemoryRefusal as exc:
            log.warning("refused job %s: %s", job.id, exc)
            status, message = Status.ERROR, str(exc)
        except (ResultsError, SweepError, NonFiniteError) as exc:
            log.error("job %s failed: %s%s", job.id, exc, f" ({exc.__cause__!r})" if exc.__cause__ else "")
            status, message = Status.ERROR, str(exc)
        except torch.cuda.OutOfMemoryError as exc:
            log.exception("out of memory in job %s (settings %s, plan:\n%s)", job.id, job.settings,
                          plans.dumps(job.plan).strip())
            status = Status.ERROR
            message = f"out of memory on {self.generator.loaded.device}: {str(exc).splitlines()[0]}"
        except Exception as exc:  # noqa: BLE001 - the engine must survive anything a run does
            log.error("job %s failed (%s of %d prompt(s), settings %s, plan:\n%s):\n%s", job.id,
                      job.kind, len(job.prompts), job.settings,
                      plans.dumps(job.plan).strip(), traceback.format_exc())
            status, message = Status.ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            if status == Status.ERROR and torch.cuda.is_available():
                torch.cuda.empty_cache()
            transformer = self.generator.loaded.transformer
            restored = all(getattr(transformer, attr) is blocks for attr, blocks in self._originals.items())
            if live is not None:
                try:
                    with writing_results(live.out):
                        live.update(status=status.value)
                except ResultsError as exc:  # the folder's run.json keeps its last record ("running")
                    log.error("job %s: marking run.json %s failed: %s (%r)", job.id, status.value, exc,
                              exc.__cause__)
                    if status != Status.ERROR:
                        status, message = Status.ERROR, str(exc)
        if job.sweep is not None:
            count = job.items
        if message is not None:
            self.send_error(message, job=job.id)
        path = live.out if live is not None else job.out_dir
        self.send_done(job.id, status, message, images=count, seconds=time.perf_counter() - started,
                       blocks_restored=restored, path=str(path) if path else None)

    def analyze(self, job: Job) -> None:
        """The similarity analysis: from the on-disk cache when this exact analysis was made before."""
        from dit_explore.engine.analysis import cached_analysis

        started = time.perf_counter()

        def progress(p: int, prompts: int, done: int, steps: int) -> None:
            self.send(protocol.Progress(job=job.id, index=p, role=Role.ANALYZE, step=done, steps=steps,
                                        prompts=prompts, elapsed=time.perf_counter() - started))

        result, cached = cached_analysis(self.generator, job.prompts, job.settings, groups=job.groups,
                                         use_cache=job.use_cache, check=self.check(job), on_progress=progress)
        self.send(protocol.Analysis(job=job.id, cached=cached, result=result))

    def sweep(self, job: Job) -> None:
        """A sweep of the job's kind on its one prompt and seed into its folder (engine/sweep.py's
        in_engine, the same folder as `dit-explore sweep`), a `progress` of role `sweep` after each item."""
        from dit_explore.engine.headless import UsageError
        from dit_explore.engine.sweep import in_engine

        assert job.sweep is not None and job.out_dir is not None
        started = time.perf_counter()

        def progress(done: int, total: int, label: str) -> None:
            job.items = done
            self.send(protocol.Progress(job=job.id, index=0, role=Role.SWEEP, step=done, steps=total,
                                        elapsed=time.perf_counter() - started, label=label))

        try:
            in_engine(self.generator, job.sweep, job.prompts[0], job.settings.seed, job.settings, job.out_dir,
                      check=self.check(job), on_progress=progress)
        except (UsageError, OSError) as exc:  # a write into its folder that failed
            raise SweepError(f"sweep into {shown(job.out_dir)}: {shown(exc)}") from exc

    def render(self, job: Job, index: int, prompt: str, live: Any) -> None:
        """The plan's image of one prompt, then its baseline (cached, or reused when the plan is the
        identity), each sent and written as soon as it exists; after the first prompt's, the side-by-side
        timing of plan and full model (a `speed` event)."""
        from dit_explore.engine.core.runs import image_plan, png_bytes

        source = self.source
        assert source is not None
        settings = job.settings
        result = self.generator.generate(prompt, settings, job.plan, check=self.check(job),
                                         on_step=self.on_step(job, index, Role.PLAN))
        quantization = self.generator.loaded.quantization
        png = png_bytes(result.image, image_plan(job.plan, source.name, settings.for_prompt(prompt)), quantization,
                        self.generator.loaded.offloaded)
        mine = Rendered(png, result.timing, result.block_runs)
        self.deliver(job, index, Role.PLAN, prompt, mine, live, cached=False)
        if not job.baseline:
            return
        self.baseline(job, index, prompt, mine, live)
        if index == 0 and result.last_inputs is not None:  # the same for every prompt: once per run
            self.speed(job, result.last_inputs, live)

    def baseline(self, job: Job, index: int, prompt: str, mine: Rendered, live: Any) -> None:
        """The identity plan's image for this prompt and settings: cached, the plan's own when the plan is
        the identity, else generated (once; then cached)."""
        from dit_explore.engine.core.runs import image_plan, png_bytes

        source = self.source
        assert source is not None
        settings = job.settings
        key = (prompt, settings)
        cached = self._baselines.get(key)
        if (cached is None and job.plan.is_identity(source.layout) and job.plan.active_steps is None
                and not job.plan.has_branches):  # (a split batch is the full model up to the last bits)
            cached = self._remember(key, mine)  # the identity plan's image is the baseline
        if cached is not None:
            self._baselines.move_to_end(key)
            self.deliver(job, index, Role.BASELINE, prompt, cached, live, cached=True)
            return
        base = self.generator.generate(prompt, settings, plans.Plan(), check=self.check(job),
                                       on_step=self.on_step(job, index, Role.BASELINE))
        base_png = png_bytes(base.image, image_plan(plans.Plan(), source.name, settings.for_prompt(prompt)),
                             self.generator.loaded.quantization, self.generator.loaded.offloaded)
        rendered = self._remember(key, Rendered(base_png, base.timing, base.block_runs))
        self.deliver(job, index, Role.BASELINE, prompt, rendered, live, cached=False)

    def speed(self, job: Job, inputs: Any, live: Any) -> None:
        """The plan against the full model on the run's last step inputs, interleaved and warm. A plan
        whose steps run several sets of orders (step tables) has each set that changes something timed
        in turn: the plan's time is their mean weighted by the steps that run each, and its active steps
        are those steps (the others run the full model)."""
        from dit_explore.engine.core.sampling import step_variants
        from dit_explore.engine.timing import side_by_side

        loaded = self.generator.loaded
        steps = job.settings.steps
        variants = step_variants(job.plan, loaded.layout, steps)
        changed = [(plan, n) for plan, n in variants if not plan.is_identity(loaded.layout)] or [variants[0]]
        timed = [(side_by_side(loaded.transformer, loaded.layout, plan, inputs, loaded.device, SPEED_CALLS,
                               self.check(job), min_seconds=SPEED_SECONDS / len(changed)), n) for plan, n in changed]
        active = sum(n for _, n in timed)
        first = timed[0][0]
        event = protocol.Speed(job=job.id, plan=sum(t.plan * n for t, n in timed) / active, full=first.identity,
                               calls=min(t.calls for t, _ in timed), steps=steps, active=active, blocks=first.blocks)
        if live is not None:
            with writing_results(live.out):
                live.update(speed=protocol.to_json(event))
        self.send(event)

    def _remember(self, key: tuple[Any, ...], rendered: Rendered) -> Rendered:
        self._baselines[key] = rendered
        while len(self._baselines) > BASELINE_CACHE_SIZE:
            self._baselines.popitem(last=False)
        return rendered

    def deliver(self, job: Job, index: int, role: Role, prompt: str, rendered: Rendered, live: Any,
                cached: bool) -> None:
        path = None
        if live is not None:
            with writing_results(live.out):
                name = live.add_png(rendered.png, index, baseline=role == Role.BASELINE)
                path = str(live.out / name)
                if role == Role.PLAN:
                    timings = [*live.record["timing"]["per_image"], protocol.to_json(rendered.timing)]
                    live.update(timing={"per_image": timings}, block_runs=protocol.to_json(rendered.block_runs))
        self.send(protocol.Image(job=job.id, index=index, role=role, prompt=prompt, cached=cached, path=path,
                                 settings=job.settings, timing=rendered.timing, block_runs=rendered.block_runs,
                                 png=rendered.png))

    def on_step(self, job: Job, index: int, role: Role) -> Callable[[int, int, Any], None]:
        from dit_explore.engine.preview import preview_image

        started = time.perf_counter()
        family = self.generator.loaded.family
        pipe = self.generator.pipe
        settings = job.settings

        def step(done: int, total: int, latents: Any) -> None:
            binary = b""
            if job.previews and done < total:  # the final image follows; no preview needed for it
                image = preview_image(family, family.spatial_latents(pipe, latents, settings.width, settings.height))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG", compress_level=1)
                binary = buffer.getvalue()
            self.send(protocol.Progress(job=job.id, index=index, role=role, step=done, steps=total,
                                        elapsed=time.perf_counter() - started, preview=binary))

        return step


def _leave_a_core_to_the_client() -> None:
    """On the CPU, compute on all cores but one: the explorer runs beside the engine, and torch's threads
    spin while they wait, so an engine on every core makes both crawl (on the 2-core dev box, toy-flux's
    enter-to-image median was 2.3 s on 2 threads and 1.0 s on 1: BENCHMARKS.md). OMP_NUM_THREADS, when
    set, wins."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def _prompts(kind: str, prompts: Sequence[str]) -> tuple[str, ...]:
    try:
        return check_prompts(prompts, f"{kind}.prompts")
    except plans.PlanError as exc:
        raise RequestError(str(exc)) from None


def _protocol_stdout() -> IO[bytes]:
    """Keep the real stdout for frames; point fd 1 (and sys.stdout) at stderr, so that nothing else —
    a library's print, a C extension's printf — can corrupt the protocol."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dit_explore.engine", description="dit-explore engine process (speaks the "
                                "protocol of docs/protocol.md on stdin/stdout; started by the TUI)")
    p.add_argument("model")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--quantize", default=None)
    p.add_argument("--memory", default="auto")
    p.add_argument("--log", default=None, help="path of this process's stderr log, reported in error events")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = _protocol_stdout()
    engine = Engine(args, out)

    def on_signal(signum: int, _frame: Any) -> None:
        engine.stop(signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    log.info("engine pid %s for %s", os.getpid(), args.model)
    code = 0
    try:
        code = engine.serve(sys.stdin.buffer)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # noqa: BLE001 - whatever escapes, the process must end (and say why)
        code = 1
        with contextlib.suppress(BaseException):
            log.critical("the engine failed: %s: %s\n%s", type(exc).__name__, shown(exc), traceback.format_exc())
            engine.send_error(f"the engine failed: {type(exc).__name__}: {shown(exc)}", fatal=True)
    code = code or engine.exit_code  # the reader's failure stops the engine like a shutdown, but is one
    with contextlib.suppress(BaseException):
        log.info("engine exiting with code %s", code)
        logging.shutdown()
    # Exit now, whatever other threads hold: a normal interpreter shutdown would wait for (or abort on) the
    # request reader, a daemon thread blocked reading stdin. Everything worth keeping is already written.
    os._exit(code)
