"""Async client of the engine process: start it, send typed requests, receive typed events, notice when it
dies.

The TUI's session drives the engine only through this class. It never imports torch: the TUI process
stays light and starts instantly.

Events are the engine's (`protocol.EngineEvent`: hello, loading, ready, progress, image, analysis, done,
error; pongs are kept as `last_pong`) plus those the client makes itself (`protocol.ClientEvent`):
`Stopped` (after `shutdown()`), `Crashed` (the process exited unexpectedly: exit code and the tail of its
log), `Unresponsive` (no pong for a while) and `Responsive` (pongs again).
Job ids are chosen by the caller (they stay unique across engine restarts); events of jobs older than
the latest submitted one are dropped, except their `done` (how they ended): the latest request wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Event


class EngineError(RuntimeError):
    """The engine could not be started or has stopped; the message is one line for the user."""


def default_log_path() -> Path:
    from dit_explore.engine.core.resolve import cache_dir

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cache_dir() / "logs" / f"engine-{stamp}-{os.getpid()}.log"


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EngineClient:
    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str | None = None,
        random_weights: bool = False,
        compile: bool = False,
        quantize: str | None = None,
        memory: str = "auto",
        log_path: Path | None = None,
        heartbeat: float = 1.0,
        unresponsive_after: float = 5.0,
        env: dict[str, str] | None = None,
        module: str = "dit_explore.engine",
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.random_weights = random_weights
        self.compile = compile
        self.quantize = quantize
        self.memory = memory
        self.log_path = log_path or default_log_path()
        self.heartbeat = heartbeat
        self.unresponsive_after = unresponsive_after
        self._env = dict(env or {})
        self._module = module  # `python -m MODULE`; tests substitute an engine with injected faults
        self.state = EngineState.STOPPED
        self.hello: protocol.Hello | None = None
        self.ready: protocol.Ready | None = None
        self.exit_code: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._latest_job = 0
        self._running_job: int | None = None
        self._last_pong = 0.0
        self._stopping = False
        self.last_pong: protocol.Pong | None = None
        self._hello_seen, self._ended = asyncio.Event(), asyncio.Event()
        self._end_message = ""

    # ------------------------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 60.0) -> protocol.Hello:
        """Start the engine and wait for its `hello` (it comes before the weights load)."""
        if self.alive:
            raise EngineError("the engine is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        args = [sys.executable, "-m", self._module, self.model, "--device", self.device, "--log", str(self.log_path)]
        if self.dtype:
            args += ["--dtype", self.dtype]
        if self.random_weights:
            args.append("--random-weights")
        if self.compile:
            args.append("--compile")
        if self.quantize:
            args += ["--quantize", self.quantize]
        if self.memory != "auto":
            args += ["--memory", self.memory]
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **self._env}
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env=env, start_new_session=True)  # own process group: the TUI's ^C is not the engine's
        finally:
            log.close()
        self.state, self.hello, self.ready, self.exit_code = EngineState.STARTING, None, None, None
        self._stopping = False
        self._running_job = None
        self._events = asyncio.Queue()
        self._hello_seen, self._ended = asyncio.Event(), asyncio.Event()
        self._end_message = ""
        self._last_pong = time.monotonic()
        self._tasks = [asyncio.create_task(self._read_events(self._proc)),
                       asyncio.create_task(self._heartbeat(self._proc))]
        try:
            await self._until(self._hello_seen, timeout)
        except TimeoutError:
            await self.shutdown()
            raise EngineError(f"the engine sent no hello within {timeout:.0f} s; log: {self.log_path}") from None
        assert self.hello is not None
        return self.hello

    async def _until(self, flag: asyncio.Event, timeout: float | None) -> None:
        """Wait for `flag`; raise EngineError if the engine ends first. Events stay queued for events()."""
        waits = [asyncio.create_task(flag.wait()), asyncio.create_task(self._ended.wait())]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not done:
            raise TimeoutError
        if not flag.is_set():
            raise EngineError(self._end_message)

    async def shutdown(self, timeout: float = 5.0) -> int | None:
        """Ask the engine to exit, close its stdin, and make sure it is gone."""
        proc = self._proc
        self._stopping = True
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send(protocol.Shutdown())
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.state = EngineState.STOPPED
        if proc is not None:
            self.exit_code = proc.returncode
        return self.exit_code

    # ---------------------------------------------------------------------------------- requests

    async def send(self, request: protocol.Request) -> None:
        """One request, as it is (see `submit` for runs and analyses). A request that cannot be framed (too
        large: a prompt or plan of megabytes) is an EngineError, like an engine that is gone: the caller
        reports it and the app lives on."""
        try:
            frame = protocol.encode(request)
        except protocol.ProtocolError as exc:
            raise EngineError(f"cannot send this {request.TYPE} request: {exc}") from None
        await self._write(frame)

    async def _write(self, frame: bytes) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            raise EngineError(f"the engine is not running ({self.state}); log: {self.log_path}")
        try:
            proc.stdin.write(frame)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise EngineError(f"the engine is gone ({exc}); log: {self.log_path}") from None

    async def submit(self, request: protocol.Run | protocol.Analyze | protocol.Sweep) -> int:
        """Send a job; from now on, events of older jobs are stale. A job in flight is superseded by the
        engine (latest wins). Returns the job id (the caller's, which must increase)."""
        if request.job <= self._latest_job:
            raise ValueError(f"job ids must increase: {request.job} after {self._latest_job}")
        self._latest_job = request.job
        await self.send(request)
        self._running_job = request.job
        if self.state in (EngineState.READY, EngineState.BUSY):
            self.state = EngineState.BUSY
        return request.job

    async def cancel(self, job: int | None = None) -> None:
        await self.send(protocol.Cancel(job=job if job is not None else self._running_job))

    async def ping(self, ident: int = 0) -> None:
        await self.send(protocol.Ping(id=ident))

    # ------------------------------------------------------------------------------------ events

    async def events(self) -> AsyncIterator[Event]:
        """Every event until the engine stops (a `Crashed` event is the last one after a crash)."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, (protocol.Crashed, protocol.Stopped)):
                return

    def _deliver(self, event: protocol.EngineEvent) -> None:
        job = getattr(event, "job", None)
        stale = job is not None and job < self._latest_job
        if stale and not isinstance(event, protocol.Done):
            return  # a newer request has been submitted; how the old one ended still counts
        if isinstance(event, protocol.Hello):
            if event.protocol != protocol.PROTOCOL_VERSION:
                raise protocol.ProtocolError(f"the engine speaks protocol {event.protocol}, this TUI "
                                             f"{protocol.PROTOCOL_VERSION}: reinstall dit-explore")
            self.hello, self.state = event, EngineState.LOADING
            self._hello_seen.set()
        elif isinstance(event, protocol.Ready):
            self.ready = event
            # A request sent while loading waits for the load.
            self.state = EngineState.BUSY if self._running_job is not None else EngineState.READY
        elif isinstance(event, protocol.Done) and job == self._running_job:
            self._running_job = None
            self.state = EngineState.READY
        elif isinstance(event, protocol.Error) and event.fatal:
            self._end(EngineState.CRASHED, event.message)
        self._events.put_nowait(event)

    def _end(self, state: EngineState, message: str) -> None:
        self.state = state
        if not self._ended.is_set():
            self._end_message = message
            self._ended.set()

    async def _read_events(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        reader = proc.stdout
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER.size)
                json_len, bin_len = protocol.parse_header(header)
                message = protocol.parse_payload(await reader.readexactly(json_len))
                binary = await reader.readexactly(bin_len) if bin_len else b""
                event = protocol.decode_event(message, binary)
                if isinstance(event, protocol.Pong):
                    self._on_pong(event)  # heartbeats stay inside the client: see last_pong
                else:
                    self._deliver(event)
        except asyncio.IncompleteReadError:
            pass  # end of stream: the process is exiting
        except protocol.ProtocolError as exc:
            self._deliver(protocol.Error(job=None, message=f"engine protocol error: {exc}", log=str(self.log_path),
                                         fatal=True))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = await proc.wait()
        self.exit_code = code
        if self._stopping:
            self._end(EngineState.STOPPED, "the engine was stopped")
            self._events.put_nowait(protocol.Stopped(exit_code=code))
            return
        tail = log_tail(self.log_path)
        self._end(EngineState.CRASHED, f"the engine exited with code {code}; log: {self.log_path}")
        self._events.put_nowait(protocol.Crashed(exit_code=code, log=str(self.log_path), log_tail=tail))

    def _on_pong(self, event: protocol.Pong) -> None:
        self._last_pong = time.monotonic()
        self.last_pong = event
        if self.state == EngineState.UNRESPONSIVE:
            if self._running_job is not None:
                self.state = EngineState.BUSY
            else:
                self.state = EngineState.READY if self.ready else EngineState.LOADING
            self._events.put_nowait(protocol.Responsive())

    async def _heartbeat(self, proc: asyncio.subprocess.Process) -> None:
        ident = 0
        while proc.returncode is None:
            await asyncio.sleep(self.heartbeat)
            ident += 1
            with contextlib.suppress(EngineError):
                await self.ping(ident)
            silent = time.monotonic() - self._last_pong
            if silent > self.unresponsive_after and self.state not in (
                    EngineState.UNRESPONSIVE, EngineState.CRASHED, EngineState.STOPPED):
                self.state = EngineState.UNRESPONSIVE
                self._events.put_nowait(protocol.Unresponsive(seconds=silent))
