"""The engine process: holds the model on the device and serves requests over stdin/stdout.

Started by `engine.client` as `python -m engine MODEL ...`. stdout carries protocol frames only (any
stray print goes to stderr, the log); stdin carries requests. A reader thread answers `ping` at once
and turns `cancel`/`shutdown`/a newer `run` into flags that the generating main thread checks between
two block executions. End of stdin (the TUI died or closed it), SIGTERM and SIGHUP all end the process
cleanly, so no orphan keeps holding GPU memory.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from engine import plan as plans
from engine import protocol
from engine.resolve import ModelError, ModelSource, resolve
from engine.sampling import Settings, resolve_settings

log = logging.getLogger("dit-explore.engine")
BASELINE_CACHE_SIZE = 16


class RequestError(ValueError):
    """A request that cannot be served; reported as an `error` event, the engine carries on."""


@dataclass
class Job:
    id: int
    plan: plans.Plan
    prompts: list[str]
    settings: Settings
    baseline: bool = True
    previews: bool = True
    out_dir: Path | None = None
    plan_source: str | None = None
    kind: str = "run"  # or "analyze"
    groups: int | None = None  # analyze: a fixed number of groups
    use_cache: bool = True  # analyze: answer from the on-disk cache when it has this analysis
    cancelled: threading.Event = field(default_factory=threading.Event)


def _int(msg: dict[str, Any], key: str) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{msg.get('type')}: '{key}' must be an integer")
    return value


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
        self._state = "starting"
        self.source: ModelSource | None = None
        self.generator: Any = None  # engine.generate.Generator once loaded
        self._originals: dict[str, Any] = {}
        self._baselines: OrderedDict[tuple[Any, ...], tuple[bytes, dict[str, Any]]] = OrderedDict()

    # ------------------------------------------------------------------------------------ output

    def send(self, event_type: str, binary: bytes = b"", **fields: Any) -> None:
        frame = protocol.encode({"type": event_type, **fields}, binary)
        with self._write_lock:
            try:
                self._out.write(frame)
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.stop("client went away")

    def send_error(self, message: str, job: int | None = None, fatal: bool = False) -> None:
        self.send("error", job=job, message=message, log=self.args.log, fatal=fatal)

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

    def _interrupt_loading(self) -> None:
        """Loading runs in the main thread and checks no flags: interrupt it like a SIGTERM would, so an
        engine whose client is gone never finishes loading 12B parameters onto the GPU for nobody."""
        if self._state in ("starting", "loading"):
            import _thread

            _thread.interrupt_main(signal.SIGTERM)

    def check(self, job: Job) -> Callable[[], None]:
        from engine.executor import Cancelled

        def check() -> None:
            if job.cancelled.is_set():
                raise Cancelled()

        return check

    # ------------------------------------------------------------------------------------ reader

    def read_requests(self, stream: IO[bytes]) -> None:
        reader = protocol.FrameReader(stream)
        while not self._stopping.is_set():
            try:
                frame = reader.read_frame()
            except protocol.ProtocolError as exc:
                self.send_error(str(exc))
                continue
            except (OSError, ValueError) as exc:
                self.stop(f"stdin failed: {exc}")
                return
            if frame is None:
                self.stop("stdin closed")
                self._interrupt_loading()
                return
            message, _binary = frame
            try:
                self.handle(message)
            except RequestError as exc:
                job = message.get("job") if isinstance(message.get("job"), int) else None
                self.send_error(str(exc), job=job)
                if job is not None and message.get("type") in ("run", "analyze"):
                    self.send("done", job=job, status="error", message=str(exc))

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ping":
            current = self._current
            self.send("pong", id=msg.get("id"), state=self._state, job=current.id if current else None,
                      rss=_rss_bytes())
        elif kind == "cancel":
            self.cancel(msg.get("job"))
        elif kind == "shutdown":
            self.stop("shutdown requested")
            self._interrupt_loading()
        elif kind == "run":
            self.submit(self.parse_run(msg))
        elif kind == "analyze":
            self.submit(self.parse_analyze(msg))
        else:
            raise RequestError(f"unknown request type {kind!r} (known: {', '.join(protocol.REQUESTS)})")

    def cancel(self, job_id: Any) -> None:
        with self._jobs:
            if self._pending is not None and job_id in (None, self._pending.id):
                dropped, self._pending = self._pending, None
                self.send("done", job=dropped.id, status="cancelled")
            if self._current is not None and job_id in (None, self._current.id):
                self._current.cancelled.set()

    def submit(self, job: Job) -> None:
        """Latest wins: a new run cancels the one in flight and replaces any queued one."""
        with self._jobs:
            if self._pending is not None:
                self.send("done", job=self._pending.id, status="cancelled")
            if self._current is not None:
                self._current.cancelled.set()
            self._pending = job
            self._jobs.notify_all()

    @staticmethod
    def _prompts(msg: dict[str, Any], default: list[str] | None = None) -> list[str]:
        kind = msg["type"]
        prompts = msg.get("prompts", default)
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(f"{kind}: 'prompts' must be a non-empty list of strings")
        if any(not p.strip() for p in prompts):
            raise RequestError(f"{kind}: a prompt must not be empty")
        return [p.strip() for p in prompts]

    def _settings(self, msg: dict[str, Any], plan: plans.Plan, where: str) -> Settings:
        """The request's sampling over the plan's over the model's defaults, checked like the CLI does."""
        source = self.source
        assert source is not None
        raw = msg.get("sampling") or {}
        if not isinstance(raw, dict):
            raise RequestError(f"{msg['type']}: 'sampling' must be an object")
        try:
            overrides = plans.from_mapping({"version": plans.PLAN_VERSION, "sampling": raw}, "sampling").sampling
            settings = resolve_settings(source, plan.sampling, overrides)
            source.check_size(settings.width, settings.height)
            plans.validate_steps(plan, settings.steps, where)
        except (plans.PlanError, ModelError) as exc:
            raise RequestError(str(exc).replace("\n", "; ")) from None
        return settings

    def parse_analyze(self, msg: dict[str, Any]) -> Job:
        from engine.similarity import DEFAULT_PROMPTS

        job_id = _int(msg, "job")
        groups = msg.get("groups")
        if groups is not None and (not isinstance(groups, int) or isinstance(groups, bool) or groups < 1):
            raise RequestError("analyze: 'groups' must be a positive integer or null")
        plan = plans.Plan()
        return Job(job_id, plan, self._prompts(msg, list(DEFAULT_PROMPTS)), self._settings(msg, plan, "analyze"),
                   previews=False, kind="analyze", groups=groups, use_cache=bool(msg.get("use_cache", True)))

    def parse_run(self, msg: dict[str, Any]) -> Job:
        job_id = _int(msg, "job")
        source = self.source
        assert source is not None
        plan_text = msg.get("plan", "version = 1\n")
        if not isinstance(plan_text, str):
            raise RequestError("run: 'plan' must be the text of a plan file")
        prompts = self._prompts(msg)
        plan_source = msg.get("plan_source") if isinstance(msg.get("plan_source"), str) else None
        try:
            plan = plans.loads(plan_text, plan_source or "plan")
            plans.validate(plan, source.layout, plan_source or "plan")
        except plans.PlanError as exc:
            raise RequestError(str(exc).replace("\n", "; ")) from None
        settings = self._settings(msg, plan, plan_source or "plan")
        out_dir = msg.get("out_dir")
        if out_dir is not None and not isinstance(out_dir, str):
            raise RequestError("run: 'out_dir' must be a path or null")
        return Job(job_id, plan, prompts, settings, bool(msg.get("baseline", True)),
                   bool(msg.get("previews", True)), Path(out_dir) if out_dir else None, plan_source)

    # -------------------------------------------------------------------------------------- main

    def serve(self, stdin: IO[bytes]) -> int:
        try:
            self.source = resolve(self.args.model)
        except ModelError as exc:
            self.send_error(str(exc), fatal=True)
            return 2
        source = self.source
        self.send("hello", protocol=protocol.PROTOCOL_VERSION, model=source.name, location=source.location,
                  kind=source.kind, family=source.family, layout=source.layout.to_json(),
                  defaults={"steps": source.defaults.steps, "guidance": source.defaults.guidance,
                            "width": source.defaults.width, "height": source.defaults.height},
                  size_multiple=source.size_multiple, max_side=source.max_side, pid=os.getpid(),
                  log=self.args.log, device=self.args.device, dtype=self.args.dtype,
                  random_weights=self.args.random_weights)
        threading.Thread(target=self.read_requests, args=(stdin,), name="requests", daemon=True).start()
        self._state = "loading"
        if not self.load():
            return 2
        self._state = "ready"
        while True:
            with self._jobs:
                while self._pending is None and not self._stopping.is_set():
                    self._jobs.wait()
                if self._stopping.is_set():
                    return 0
                job, self._pending = self._pending, None
                self._current = job
            self._state = "busy"
            try:
                self.execute(job)
            finally:
                with self._jobs:
                    self._current = None
                self._state = "ready"

    def load(self) -> bool:
        assert self.source is not None
        started = time.perf_counter()

        def progress(stage: str, fraction: float | None = None) -> None:
            self.send("loading", stage=stage, fraction=fraction, elapsed=time.perf_counter() - started)

        progress("starting torch")
        from engine.generate import Generator, dtype_name
        from engine.models import load, pick_device, pick_dtype

        try:
            device = pick_device(self.args.device)
            dtype = pick_dtype(self.args.dtype, device)
            loaded = load(self.source, device, dtype, random_weights=self.args.random_weights,
                          compile=self.args.compile, on_status=progress)
        except ModelError as exc:
            self.send_error(str(exc), fatal=True)
            return False
        except Exception as exc:  # noqa: BLE001 - any load failure ends this engine with a report
            log.exception("loading failed")
            self.send_error(f"loading {self.source.name} failed: {type(exc).__name__}: {exc}", fatal=True)
            return False
        self.generator = Generator(loaded, on_warning=lambda message: self.send_error(message))
        self._originals = {s.attr: getattr(loaded.transformer, s.attr) for s in self.source.layout.stacks}
        self.send("ready", device=str(device), dtype=dtype_name(dtype), load_seconds=loaded.load_seconds,
                  random_weights=loaded.random_weights)
        return True

    # ----------------------------------------------------------------------------------- running

    def execute(self, job: Job) -> None:
        import torch

        from engine.executor import Cancelled
        from engine.generate import run_record
        from engine.runs import LiveRun

        started = time.perf_counter()
        status, message = "ok", None
        live = None
        count = 0
        try:
            if job.kind == "analyze":
                self.analyze(job)
                count = len(job.prompts)
            else:
                if job.out_dir is not None:
                    record = run_record(self.generator.loaded, job.plan, job.plan_source, job.prompts, job.settings)
                    live = LiveRun(job.out_dir, {**record, "timing": {"per_image": []}, "block_runs": None})
                for index, prompt in enumerate(job.prompts):
                    self.render(job, index, prompt, live)
                    count += 1
        except Cancelled:
            status = "cancelled"
        except torch.cuda.OutOfMemoryError as exc:
            log.exception("out of memory in job %s", job.id)
            status, message = "error", f"out of memory on {self.generator.loaded.device}: {str(exc).splitlines()[0]}"
        except Exception as exc:  # noqa: BLE001 - the engine must survive anything a run does
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            status, message = "error", f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            if status == "error" and torch.cuda.is_available():
                torch.cuda.empty_cache()
            transformer = self.generator.loaded.transformer
            restored = all(getattr(transformer, attr) is blocks for attr, blocks in self._originals.items())
            if live is not None:
                live.update(status=status)
        if message is not None:
            self.send_error(message, job=job.id)
        self.send("done", job=job.id, status=status, message=message, images=count,
                  seconds=time.perf_counter() - started, blocks_restored=restored,
                  path=str(job.out_dir) if job.out_dir else None)

    def analyze(self, job: Job) -> None:
        """The similarity analysis: from the on-disk cache when this exact analysis was made before."""
        from engine.analysis import analyze
        from engine.generate import dtype_name
        from engine.resolve import cache_dir
        from engine.similarity import cache_key, load_cached, store_cached

        loaded = self.generator.loaded
        settings = job.settings
        key = cache_key(model=loaded.source.name, revision=loaded.revision, prompts=job.prompts,
                        steps=settings.steps, width=settings.width, height=settings.height, seed=settings.seed,
                        dtype=dtype_name(loaded.dtype), guidance=settings.guidance)
        result = load_cached(cache_dir(), key) if job.use_cache else None
        cached = result is not None
        if result is not None:
            result = result.regroup(job.groups)
        else:
            started = time.perf_counter()

            def progress(p: int, prompts: int, done: int, steps: int) -> None:
                self.send("progress", job=job.id, index=p, role="analyze", step=done, steps=steps, prompts=prompts,
                          elapsed=time.perf_counter() - started)

            result = analyze(self.generator, job.prompts, settings, groups=job.groups, revision=loaded.revision,
                             check=self.check(job), on_progress=progress)
            store_cached(cache_dir(), result)
        self.send("analysis", job=job.id, cached=cached, result=result.to_json())

    def render(self, job: Job, index: int, prompt: str, live: Any) -> None:
        """The plan's image of one prompt, then its baseline (cached, or reused when the plan is the
        identity), each sent and written as soon as it exists."""
        from engine.runs import image_plan, png_bytes

        source = self.source
        assert source is not None
        settings = job.settings
        result = self.generator.generate(prompt, settings, job.plan, check=self.check(job),
                                         on_step=self.on_step(job, index, "plan"))
        png = png_bytes(result.image, image_plan(job.plan, source.name, settings.for_prompt(prompt)))
        meta = {"timing": result.timing_json(), "block_runs": result.block_runs}
        self.deliver(job, index, "plan", prompt, png, meta, live, cached=False)
        if not job.baseline:
            return
        key = (prompt, settings)
        cached = self._baselines.get(key)
        if cached is None and job.plan.is_identity(source.layout) and job.plan.active_steps is None:
            cached = self._remember(key, png, meta)  # the identity plan's image is the baseline
        if cached is not None:
            self._baselines.move_to_end(key)
            self.deliver(job, index, "baseline", prompt, cached[0], cached[1], live, cached=True)
            return
        base = self.generator.generate(prompt, settings, plans.Plan(), check=self.check(job),
                                       on_step=self.on_step(job, index, "baseline"))
        base_png = png_bytes(base.image, image_plan(plans.Plan(), source.name, settings.for_prompt(prompt)))
        base_meta = {"timing": base.timing_json(), "block_runs": base.block_runs}
        self._remember(key, base_png, base_meta)
        self.deliver(job, index, "baseline", prompt, base_png, base_meta, live, cached=False)

    def _remember(self, key: tuple[Any, ...], png: bytes, meta: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        self._baselines[key] = (png, meta)
        while len(self._baselines) > BASELINE_CACHE_SIZE:
            self._baselines.popitem(last=False)
        return png, meta

    def deliver(self, job: Job, index: int, role: str, prompt: str, png: bytes, meta: dict[str, Any],
                live: Any, cached: bool) -> None:
        path = None
        if live is not None:
            name = live.add_png(png, index, baseline=role == "baseline")
            path = str(live.out / name)
            if role == "plan":
                live.update(timing={"per_image": [*live.record["timing"]["per_image"], meta["timing"]]},
                            block_runs=meta["block_runs"])
        self.send("image", png, job=job.id, index=index, role=role, prompt=prompt, cached=cached, path=path,
                  settings=job.settings.to_json(), **meta)

    def on_step(self, job: Job, index: int, role: str) -> Callable[[int, int, Any], None]:
        from engine.preview import preview_image, spatial_latents

        started = time.perf_counter()
        family = self.generator.loaded.family
        pipe = self.generator.pipe
        settings = job.settings

        def step(done: int, total: int, latents: Any) -> None:
            binary = b""
            if job.previews and done < total:  # the final image follows; no preview needed for it
                image = preview_image(family, spatial_latents(pipe, family, latents, settings.width, settings.height))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG", compress_level=1)
                binary = buffer.getvalue()
            self.send("progress", binary, job=job.id, index=index, role=role, step=done, steps=total,
                      elapsed=time.perf_counter() - started)

        return step


def _protocol_stdout() -> IO[bytes]:
    """Keep the real stdout for frames; point fd 1 (and sys.stdout) at stderr, so that nothing else —
    a library's print, a C extension's printf — can corrupt the protocol."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine", description="dit-explore engine process (speaks the "
                                "protocol of docs/protocol.md on stdin/stdout; started by the TUI)")
    p.add_argument("model")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--compile", action="store_true")
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
    log.info("engine exiting with code %s", code)
    logging.shutdown()
    # Exit now: the request reader is a daemon thread blocked in stdin.read(), and a normal interpreter
    # shutdown would abort on the stdin buffer's lock. Everything worth keeping is already written.
    os._exit(code)
