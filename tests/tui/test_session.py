"""The session (tui/session.py) without an engine process or a Textual app: a scripted fake engine whose
events the test puts in a queue, a factory of fresh fakes (engine restarts), `post=messages.append`.

Every test runs its coroutine under asyncio.run and drives the session either through `follow()` (the
fake's queue) or by calling `handle()` directly. Expectations (job ids, statuses, requests and their
fields, messages) are written out by hand in each test.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image
from textual.message import Message

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.families.base import Defaults
from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.protocol import EngineState, Role, Status
from dit_explore.engine.core.sampling import BlockRuns, Settings, Timing
from dit_explore.engine.core.similarity import SimilarityResult, StackResult
from dit_explore.tui import session as session_module
from dit_explore.tui.client import EngineError
from dit_explore.tui.metrics import Difference, difference
from dit_explore.tui.session import (
    AnalysisLanded,
    LayoutChanged,
    Notice,
    ProgressShown,
    RecordChanged,
    RunWish,
    Session,
    StateShown,
    SweepEnded,
    SweepWish,
    slug,
)

M = TypeVar("M", bound=Message)

LAYOUT = Layout("flux", (Stack("double", "transformer_blocks", 4), Stack("single", "single_transformer_blocks", 6)))
OTHER_LAYOUT = Layout("flux", (Stack("double", "transformer_blocks", 2), Stack("single", "single_transformer_blocks", 3)))

SIMILARITY = SimilarityResult(
    model="tiny-flux",
    stacks={"double": StackResult(2, [[1.0, 0.5], [0.5, 1.0]], [(0, 1)])},
    order=[("double", 0), ("double", 1)],
    matrix=[[1.0, 0.5], [0.5, 1.0]],
    groups=[(0, 1)],
    prompts=["p1"],
    steps=2,
    seed=0,
)


def hello(layout: Layout = LAYOUT) -> protocol.Hello:
    return protocol.Hello(protocol=protocol.PROTOCOL_VERSION, model="tiny-flux", location="tiny-flux", kind="tiny",
                          family="flux", layout=layout, defaults=Defaults(steps=4, guidance=3.5, width=64, height=64),
                          size_multiple=16, max_side=None, pid=4242, log=None, device="cpu", dtype=None,
                          random_weights=False)


READY = protocol.Ready(device="cpu", dtype="float32", load_seconds=1.5, random_weights=False)


def wish(prompt: str = "a red fox", label: str = "swap 1-2") -> RunWish:
    # The plan carries its own [sampling]: the session must drop it (the form's sampling is the one source).
    plan = plans.Plan(orders=(("double", (0, 2, 1, 3)),), name="swap", sampling=plans.Sampling(prompt="x", seed=99))
    return RunWish(plan, prompt, plans.Sampling(seed=3, steps=2, width=64, height=64), label)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()


TIMING = Timing(total=1.0, text_encode=0.1, text_encode_cached=False, transformer_steps=(0.4, 0.4), decode=0.1)
BLOCK_RUNS = BlockRuns(full_per_step={"double": 4}, per_step=({"double": 4}, {"double": 4}), total=8, full_total=8)


def image_event(job: int, role: Role, data: bytes, timing: Timing = TIMING) -> protocol.Image:
    return protocol.Image(job=job, index=0, role=role, prompt="a red fox", cached=False, path=None,
                          settings=Settings(seed=3, steps=2, width=8, height=8, guidance=3.5, max_sequence_length=None),
                          timing=timing, block_runs=BLOCK_RUNS, png=data)


# ------------------------------------------------------------------------------------------ the fake


class FakeEngine:
    """The Engine protocol of tui/session.py, scripted: `deliver` puts events in the queue `events()` reads,
    with the state bookkeeping of EngineClient._deliver (hello → loading, ready → ready or busy, the running
    job's done → ready; crashed/stopped: no longer alive). `start()` waits for a delivered hello, as the real
    client does. `handled` counts events the session has finished handling (the generator resumes only when
    the session asks for the next one)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = EngineState.STOPPED
        self.log_path = Path(f"/nonexistent/{name}.log")
        self.hello: protocol.Hello | None = None
        self.requests: list[protocol.Run | protocol.Analyze] = []
        self.cancels: list[int | None] = []
        self.shutdowns = 0
        self.started = False
        self.start_error: EngineError | None = None
        self.delivered = 0
        self.handled = 0
        self._alive = False
        self._queue: asyncio.Queue[protocol.Event] = asyncio.Queue()
        self._hello_seen = asyncio.Event()
        self._running_job: int | None = None
        self._latest_job = 0

    @property
    def alive(self) -> bool:
        return self._alive

    async def start(self, timeout: float = 60.0) -> protocol.Hello:
        if self.start_error is not None:
            raise self.start_error
        self.started, self._alive, self.state = True, True, EngineState.STARTING
        await self._hello_seen.wait()
        assert self.hello is not None
        return self.hello

    def deliver(self, *events: protocol.Event) -> None:
        for event in events:
            match event:
                case protocol.Hello():
                    self.hello, self.state = event, EngineState.LOADING
                    self._hello_seen.set()
                case protocol.Ready():
                    self.state = EngineState.BUSY if self._running_job is not None else EngineState.READY
                case protocol.Done() if event.job == self._running_job:
                    self._running_job, self.state = None, EngineState.READY
                case protocol.Crashed():
                    self._alive, self.state = False, EngineState.CRASHED
                case protocol.Stopped():
                    self._alive, self.state = False, EngineState.STOPPED
                case protocol.Unresponsive():
                    self.state = EngineState.UNRESPONSIVE
            self._queue.put_nowait(event)
            self.delivered += 1

    async def events(self) -> AsyncIterator[protocol.Event]:
        while True:
            event = await self._queue.get()
            yield event
            self.handled += 1
            if isinstance(event, (protocol.Crashed, protocol.Stopped)):
                return

    async def submit(self, request: protocol.Run | protocol.Analyze) -> int:
        if not self._alive:
            raise EngineError(f"the engine is not running ({self.state})")
        if request.job <= self._latest_job:
            raise ValueError(f"job ids must increase: {request.job} after {self._latest_job}")
        self._latest_job = self._running_job = request.job
        self.requests.append(request)
        if self.state in (EngineState.READY, EngineState.BUSY):
            self.state = EngineState.BUSY
        return request.job

    async def cancel(self, job: int | None = None) -> None:
        self.cancels.append(job)

    async def shutdown(self, timeout: float = 5.0) -> int | None:
        self.shutdowns += 1
        if self._alive:
            self.deliver(protocol.Stopped(exit_code=0))
        self.state = EngineState.STOPPED
        return 0

    async def drained(self) -> None:
        """Until the session has handled every event delivered so far."""
        await until(lambda: self.handled == self.delivered, f"{self.name} handled {self.delivered} events")


async def until(condition: Callable[[], bool], what: str, deadline: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    spins = 0
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting until: {what}")
        spins += 1
        await asyncio.sleep(0 if spins < 200 else 0.001)


class Harness:
    """A session with a factory of fakes, `post=messages.append` and an `ensure_engine` that counts its
    calls and (with `follow_on_ensure`) starts `session.follow()` as a task, as the app's worker does: that
    worker is exclusive, so a follow still running is cancelled first."""

    def __init__(self, tmp_path: Path, *, follow_on_ensure: bool = True) -> None:
        self.messages: list[Message] = []
        self.engines: list[FakeEngine] = []
        self.ensure_calls = 0
        self.follow_on_ensure = follow_on_ensure
        self.tasks: list[asyncio.Task[None]] = []
        self.runs_dir = tmp_path / "runs"
        self.session = Session(LAYOUT, self.factory, self.messages.append, runs_dir=self.runs_dir,
                               ensure_engine=self.ensure)

    def factory(self) -> FakeEngine:
        fake = FakeEngine(f"engine-{len(self.engines)}")
        self.engines.append(fake)
        return fake

    def ensure(self) -> None:
        self.ensure_calls += 1
        if self.follow_on_ensure:
            self.follow()

    def follow(self) -> asyncio.Task[None]:
        for old in self.tasks:
            old.cancel()
        task = asyncio.create_task(self.session.follow())
        self.tasks.append(task)
        return task

    async def engine(self, index: int) -> FakeEngine:
        """Until the factory has made engine number `index` (0, 1, ...) and the session waits in its start()."""
        await until(lambda: len(self.engines) > index and self.engines[index].started, f"engine {index} starts")
        return self.engines[index]

    async def ready_engine(self, *, similarity: SimilarityResult | None = SIMILARITY) -> FakeEngine:
        """Follow a new engine through hello and ready; with `similarity` known, ready asks no analysis."""
        self.session.similarity = similarity
        index = len(self.engines)
        self.follow()
        fake = await self.engine(index)
        fake.deliver(hello(), READY)
        await fake.drained()
        return fake

    def of(self, cls: type[M]) -> list[M]:
        return [m for m in self.messages if isinstance(m, cls)]

    def since(self, mark: int, cls: type[M]) -> list[M]:
        return [m for m in self.messages[mark:] if isinstance(m, cls)]

    async def close(self) -> None:
        for task in self.tasks:
            if task.done() and not task.cancelled():
                assert task.exception() is None, f"follow failed: {task.exception()!r}"
            else:
                task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def scenario(body: Callable[[Harness], Coroutine[Any, Any, None]], tmp_path: Path, **options: Any) -> None:
    async def main() -> None:
        h = Harness(tmp_path, **options)
        try:
            await asyncio.wait_for(body(h), 10)
        finally:
            await h.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ 1. pending


def check_run_request(request: protocol.Run | protocol.Analyze, job: int, w: RunWish, runs_dir: Path) -> None:
    assert isinstance(request, protocol.Run)
    assert request.job == job
    assert "[sampling]" not in request.plan
    assert plans.loads(request.plan) == plans.Plan(orders=(("double", (0, 2, 1, 3)),), name="swap")
    assert request.prompts == (w.prompt,)
    assert request.sampling == plans.Sampling(seed=3, steps=2, width=64, height=64)
    assert request.baseline is True
    assert request.plan_source == "swap"
    out_dir = Path(request.out_dir or "")
    assert out_dir.parent == runs_dir.resolve()
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{job:03d}-{slug(w.label)}", out_dir.name), out_dir.name


def test_run_before_any_engine_waits_for_hello(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        w = wish()
        await h.session.run(w)  # no client at all: an engine is started, the run waits
        assert h.ensure_calls == 1
        assert [n.text for n in h.of(Notice)] == ["starting a new engine"]
        fake = await h.engine(0)
        assert fake.requests == [] and h.session.records == {}
        assert h.of(RecordChanged) == []

        fake.deliver(hello())
        await fake.drained()
        assert len(fake.requests) == 1
        check_run_request(fake.requests[0], 1, w, h.runs_dir)
        assert h.of(LayoutChanged) == []  # the same layout as the session's
        [added] = h.of(RecordChanged)
        assert added.added and not added.show
        assert added.record is h.session.records[1]
        assert added.record.status == Status.RUNNING
        assert added.record.prompt == "a red fox" and added.record.label == "swap 1-2"
        assert added.record.path == Path(fake.requests[0].out_dir or "")  # type: ignore[union-attr]
        # Entered while loading: the loading state stays on screen, a notice says the run is queued.
        assert h.of(StateShown)[-1].text == "loading the model…"
        assert h.of(Notice)[-1].text == "queued: the run starts when the model is ready"
        assert h.ensure_calls == 1

    scenario(body, tmp_path)


def test_two_runs_before_any_engine_start_one_engine(tmp_path: Path) -> None:
    """A second enter while the first engine is still being created starts no second one (which would
    cancel the first follow and could orphan its process); the latest wish goes to the one engine."""

    async def body(h: Harness) -> None:
        await h.session.run(wish("first prompt"))
        await h.session.run(wish("second prompt", label="second"))
        assert h.ensure_calls == 1
        fake = await h.engine(0)
        await h.session.run(wish("third prompt", label="third"))
        assert h.ensure_calls == 1 and len(h.engines) == 1
        fake.deliver(hello())
        await fake.drained()
        check_run_request(fake.requests[0], 1, wish("third prompt", label="third"), h.runs_dir)
        assert len(fake.requests) == 1

    scenario(body, tmp_path)


def test_run_while_engine_starts_waits_for_hello_latest_wish_wins(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.follow()
        fake = await h.engine(0)  # started, no hello yet: alive, state starting
        assert fake.alive and fake.hello is None
        await h.session.run(wish("first prompt"))
        await h.session.run(wish("second prompt", label="second"))
        assert h.ensure_calls == 0  # the engine is alive: no new one
        assert fake.requests == [] and h.session.records == {}

        fake.deliver(hello())
        await fake.drained()
        assert len(fake.requests) == 1  # only the latest wish goes
        check_run_request(fake.requests[0], 1, wish("second prompt", label="second"), h.runs_dir)
        assert list(h.session.records) == [1]

        # the ready that follows asks no analysis while the run runs (state busy, a record running)
        h.session.similarity = None
        fake.deliver(READY)
        await fake.drained()
        assert fake.state == EngineState.BUSY
        assert len(fake.requests) == 1

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 2. restart


def test_crash_mid_run_then_run_restarts_engine_job_ids_continue(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.ready_engine()
        await h.session.run(wish("on a"))
        assert [r.job for r in a.requests] == [1]
        assert h.session.records[1].status == Status.RUNNING
        follow_a = h.tasks[0]

        mark = len(h.messages)
        a.deliver(protocol.Crashed(exit_code=-9, log="/tmp/a.log", log_tail="loading\nKilled\n"))
        await a.drained()
        await until(follow_a.done, "follow of engine A ends after its crash")
        assert h.session.records[1].status == Status.CRASHED
        assert [m.record.job for m in h.since(mark, RecordChanged)] == [1]
        states = [m.text for m in h.since(mark, StateShown)]
        assert len(states) == 1 and "crashed" in states[0] and "-9" in states[0]
        [notice] = h.since(mark, Notice)
        assert notice.severity == "error" and "Killed" in notice.text and "/tmp/a.log" in notice.text
        assert h.session.state == EngineState.CRASHED

        h.session.similarity = None  # so B's ready would analyze if it could
        await h.session.run(wish("on b", label="after crash"))
        assert h.ensure_calls == 1  # the client is dead: a new engine
        b = await h.engine(1)
        assert b is not a and h.session.client is b
        assert b.requests == []  # waits for B's hello

        mark = len(h.messages)
        b.deliver(hello(OTHER_LAYOUT))
        await b.drained()
        [changed] = h.since(mark, LayoutChanged)
        assert changed.layout == OTHER_LAYOUT and h.session.layout == OTHER_LAYOUT
        assert [type(r) for r in b.requests] == [protocol.Run]
        assert b.requests[0].job == 2  # ids never restart
        assert b.requests[0].prompts == ("on b",)
        assert [r.job for r in a.requests] == [1]  # nothing more went to the dead engine
        assert sorted(h.session.records) == [1, 2]
        assert {job: r.status for job, r in h.session.records.items()} == {1: Status.CRASHED, 2: Status.RUNNING}
        assert all(job == r.job for job, r in h.session.records.items())
        added = [m.record.job for m in h.of(RecordChanged) if m.added]
        assert added == [1, 2]  # no two records share a job id

        b.deliver(READY, protocol.Done(job=2, status=Status.OK, seconds=0.5))
        await b.drained()
        assert h.session.records[2].status == Status.OK
        # the analysis the crash left missing is asked after the run: job 3, built-in prompts
        assert [(type(r), r.job) for r in b.requests] == [(protocol.Run, 2), (protocol.Analyze, 3)]

    scenario(body, tmp_path)


def test_restart_mid_run_leaves_no_record_running_and_analysis_comes_back(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.ready_engine(similarity=None)  # ready asks the analysis: job 1
        assert [(type(r), r.job) for r in a.requests] == [(protocol.Analyze, 1)]
        await h.session.run(wish())  # pre-empts it: job 2
        assert [r.job for r in a.requests] == [1, 2]

        await h.session.restart()  # the user restarts the engine mid-run
        assert a.shutdowns == 1 and h.ensure_calls == 1
        # A's follow was cancelled (an exclusive worker) before it could handle A's `stopped`: the record
        # must not stay running (it would never end, and would block every analysis from now on)
        b = await h.engine(1)
        assert a.handled < a.delivered
        assert h.session.records[2].status == Status.CANCELLED
        assert h.of(RecordChanged)[-1].record.job == 2
        b.deliver(hello(), READY)
        await b.drained()
        # ready with no analysis known: analyze (nothing runs on B)
        assert [(type(r), r.job, getattr(r, "prompts", "-")) for r in b.requests] == [(protocol.Analyze, 3, None)]

    scenario(body, tmp_path)


def test_shutdown_mid_run_stops_the_engine_and_ends_the_run(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.ready_engine()
        await h.session.run(wish())
        mark = len(h.messages)
        await h.session.shutdown()  # quit: A says `stopped`, which its follow handles
        await a.drained()
        await until(h.tasks[0].done, "follow of A ends after `stopped`")
        assert [m.text for m in h.since(mark, StateShown)] == ["stopped"]
        assert h.session.records[1].status == Status.CANCELLED
        assert [m.record.job for m in h.since(mark, RecordChanged)] == [1]
        assert h.session.state == EngineState.STOPPED and not h.session.busy
        assert h.ensure_calls == 0

    scenario(body, tmp_path)


def test_engine_that_fails_to_start_keeps_the_run_for_the_next(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        original = h.factory

        def failing_first() -> FakeEngine:
            fake = original()
            if len(h.engines) == 1:
                fake.start_error = EngineError("the engine exited with code 1; log: x.log")
            return fake

        h.session._engine_factory = failing_first
        await h.session.run(wish())
        await until(lambda: bool(h.tasks) and h.tasks[0].done(), "the first follow gives up")
        assert any(m.text.startswith("failed to start: the engine exited") for m in h.of(StateShown))
        assert any(n.severity == "error" and "code 1" in n.text for n in h.of(Notice))
        assert h.session.records == {}

        await h.session.run(wish("again"))
        assert h.ensure_calls == 2
        b = await h.engine(1)
        b.deliver(hello())
        await b.drained()
        assert [(r.job, r.prompts) for r in b.requests] == [(1, ("again",))]

    scenario(body, tmp_path)


def test_an_engine_that_cannot_load_the_model_is_not_restarted_blindly(tmp_path: Path) -> None:
    """A fatal error before ready (say, weights not in the cache): the status keeps the reason, enter does
    not start another engine that would fail the same way, the palette's restart does."""

    async def body(h: Harness) -> None:
        h.follow()
        a = await h.engine(0)
        reason = "flux-schnell: the weights are not in the local Hugging Face cache"
        a.deliver(hello(), protocol.Error(job=None, message=reason, log="a.log", fatal=True),
                  protocol.Crashed(exit_code=2, log="a.log", log_tail=""))
        await a.drained()
        assert h.session.cannot_start == reason
        assert h.of(StateShown)[-1].text.startswith(f"stopped: {reason} — engine: Restart")
        await h.session.run(wish())
        assert h.ensure_calls == 0 and len(h.engines) == 1
        assert h.of(Notice)[-1].title == "not started" and reason in h.of(Notice)[-1].text
        await h.session.restart()
        assert h.ensure_calls == 1 and h.session.cannot_start is None
        b = await h.engine(1)
        b.deliver(hello(), READY)
        await b.drained()
        await h.session.run(wish("works now"))
        assert [r.prompts for r in b.requests if isinstance(r, protocol.Run)] == [("works now",)]

    scenario(body, tmp_path)


def test_an_engine_that_fails_after_loading_is_restarted_by_enter(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.ready_engine()
        a.deliver(protocol.Error(job=None, message="engine protocol error: bad frame", log="a.log", fatal=True),
                  protocol.Crashed(exit_code=-9, log="a.log", log_tail=""))
        await a.drained()
        assert h.session.cannot_start is None
        assert h.of(StateShown)[-1].text == "stopped: engine protocol error: bad frame — enter restarts it"
        await h.session.run(wish())
        assert h.ensure_calls == 1

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 3. superseded


def test_superseded_run_changes_only_its_record(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        await h.session.run(wish("one"))
        await h.session.run(wish("two"))
        assert [(r.job, r.prompts) for r in fake.requests] == [(1, ("one",)), (2, ("two",))]
        assert fake.state == EngineState.BUSY

        mark = len(h.messages)
        fake.deliver(protocol.Done(job=1, status=Status.SUPERSEDED, seconds=0.2))
        await fake.drained()
        assert h.session.records[1].status == Status.SUPERSEDED
        assert h.session.records[2].status == Status.RUNNING
        assert [(type(m), m.record.job) for m in h.messages[mark:] if isinstance(m, RecordChanged)] == [
            (RecordChanged, 1)]
        assert h.since(mark, StateShown) == [] and h.since(mark, ProgressShown) == [] and h.since(mark, Notice) == []

        fake.deliver(protocol.Done(job=2, status=Status.OK, seconds=1.25))
        await fake.drained()
        assert {job: r.status for job, r in h.session.records.items()} == {1: Status.SUPERSEDED, 2: Status.OK}
        states = [m.text for m in h.since(mark, StateShown)]
        assert states == ["ready — last run ok in 1.25 s"]
        assert not any("superseded" in m.text for m in h.of(StateShown))
        last = h.since(mark, ProgressShown)[-1]
        assert (last.done, last.total) == (0, 0)
        assert len(fake.requests) == 2  # similarity known: no analysis after

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 4. cancel


def test_cancel(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        assert fake.state == EngineState.READY
        assert await h.session.cancel() is False
        assert fake.cancels == []

        await h.session.run(wish())
        assert fake.state == EngineState.BUSY and h.session.busy
        assert await h.session.cancel() is True
        assert fake.cancels == [None]  # the job in flight

        fake.deliver(protocol.Unresponsive(seconds=7.0))
        await fake.drained()
        assert await h.session.cancel() is True  # unresponsive counts as busy
        assert fake.cancels == [None, None]

        mark = len(h.messages)
        fake.deliver(protocol.Done(job=1, status=Status.CANCELLED, seconds=0.3))
        await fake.drained()
        assert h.session.records[1].status == Status.CANCELLED
        assert [n.text for n in h.since(mark, Notice)] == ["run cancelled"]
        assert [m.record.job for m in h.since(mark, RecordChanged)] == [1]
        assert await h.session.cancel() is False
        assert fake.cancels == [None, None]

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 5. analysis


def test_analysis_policy(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        fake = await h.ready_engine(similarity=None)
        [analyze] = fake.requests
        assert analyze == protocol.Analyze(job=1, prompts=None, sampling=plans.Sampling())

        await h.session.run(wish())  # latest wins: the run goes at once, after the analysis
        assert [(type(r), r.job) for r in fake.requests] == [(protocol.Analyze, 1), (protocol.Run, 2)]

        mark = len(h.messages)
        fake.deliver(protocol.Done(job=1, status=Status.SUPERSEDED))
        await fake.drained()
        assert len(fake.requests) == 2 and h.since(mark, StateShown) == []

        fake.deliver(protocol.Done(job=2, status=Status.OK, seconds=2.0))
        await fake.drained()
        assert h.session.similarity is None
        assert [(type(r), r.job) for r in fake.requests] == [
            (protocol.Analyze, 1), (protocol.Run, 2), (protocol.Analyze, 3)]
        assert fake.requests[2] == protocol.Analyze(job=3, prompts=None, sampling=plans.Sampling())
        assert [m.text for m in h.since(mark, StateShown)] == ["ready — last run ok in 2.00 s"]

        mark = len(h.messages)
        fake.deliver(protocol.Analysis(job=3, cached=True, result=SIMILARITY),
                     protocol.Done(job=3, status=Status.OK, seconds=0.1))
        await fake.drained()
        [landed] = h.since(mark, AnalysisLanded)
        assert landed.result is SIMILARITY and landed.cached is True
        assert h.session.similarity is SIMILARITY
        assert [m.text for m in h.since(mark, StateShown)] == ["ready — analysis ok in 0.10 s"]

        fake.deliver(READY)  # similarity known: nothing
        await fake.drained()
        await h.session.handle(READY)
        assert len(fake.requests) == 3

        # a run that fails does not ask again; one that ends well with no analysis known does
        h.session.similarity = None
        await h.session.run(wish())
        fake.deliver(protocol.Done(job=4, status=Status.ERROR, message="bad plan"))
        await fake.drained()
        assert [r.job for r in fake.requests] == [1, 2, 3, 4]

    scenario(body, tmp_path)


def test_analysis_of_a_users_prompt_waits_for_the_run(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        await h.session.run(wish())
        sampling = plans.Sampling(seed=5, steps=3)
        h.session.analyze_prompt("a cat", sampling)
        await h.session.submit_analysis()  # a run runs: not now
        assert [r.job for r in fake.requests] == [1]
        fake.deliver(protocol.Done(job=1, status=Status.OK, seconds=1.0))
        await fake.drained()
        assert fake.requests[1] == protocol.Analyze(job=2, prompts=("a cat",), sampling=sampling)

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 6. images


def test_images_fill_the_record_and_difference_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(image: Image.Image, baseline: Image.Image) -> Difference:
        calls.append(1)
        return difference(image, baseline)

    monkeypatch.setattr(session_module, "difference", counting)

    plan_pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    plan_pixels[..., 0], plan_pixels[..., 1], plan_pixels[..., 2] = 10, 20, 30
    base_pixels = plan_pixels.copy()
    base_pixels[0, 0, 0] = 40  # one channel of one pixel off by 30
    base_pixels[7, :, 2] = 50  # a row's blue off by 20
    # by hand: squared errors 30² + 8·20² = 4100 over 8·8·3 = 192 values
    mse = (30**2 + 8 * 20**2) / 192
    expected_psnr = 10 * math.log10(255**2 / mse)
    expected_mad = (30 + 8 * 20) / 192
    a, b = plan_pixels.astype(np.float64), base_pixels.astype(np.float64)
    assert math.isclose(10 * math.log10(255**2 / np.mean((a - b) ** 2)), expected_psnr)  # the same, by numpy

    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        await h.session.run(wish())
        record = h.session.records[1]

        mark = len(h.messages)
        fake.deliver(image_event(1, Role.PLAN, png(plan_pixels)))
        await fake.drained()
        assert record.image is not None and np.array_equal(np.asarray(record.image), plan_pixels)
        assert record.timing == TIMING and record.block_runs == BLOCK_RUNS
        assert record.baseline is None and record.difference is None and calls == []
        [shown] = h.since(mark, RecordChanged)
        assert shown.show and not shown.added and shown.record is record

        base_timing = Timing(total=2.0, text_encode=0.0, text_encode_cached=True, transformer_steps=(0.9, 0.9),
                             decode=0.2)
        mark = len(h.messages)
        fake.deliver(image_event(1, Role.BASELINE, png(base_pixels), base_timing))
        await fake.drained()
        assert record.baseline is not None and np.array_equal(np.asarray(record.baseline), base_pixels)
        assert record.baseline_timing == base_timing and record.timing == TIMING
        assert calls == [1]
        assert record.difference is not None
        assert math.isclose(record.difference.psnr, expected_psnr, rel_tol=1e-12)
        assert math.isclose(record.difference.mad, expected_mad, rel_tol=1e-12)
        assert f"PSNR {expected_psnr:.1f} dB" in record.difference.describe()
        [shown] = h.since(mark, RecordChanged)
        assert shown.show and shown.record is record

        mark = len(h.messages)
        fake.deliver(image_event(99, Role.PLAN, png(plan_pixels)))  # no such record: ignored
        await fake.drained()
        assert h.messages[mark:] == [] and calls == [1]

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 7. funnel


def test_a_failing_event_becomes_an_error_notice(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        await h.session.run(wish())

        mark = len(h.messages)
        bad = image_event(1, Role.PLAN, b"this is not a png")
        await h.session.handle(bad)  # does not raise
        [notice] = h.since(mark, Notice)
        assert notice.severity == "error" and notice.title == "internal error"
        assert "image" in notice.text and "UnidentifiedImageError" in notice.text
        assert h.session.records[1].image is None

        # through the follow loop: the bad event, then good ones, all handled
        mark = len(h.messages)
        good = np.full((8, 8, 3), 128, dtype=np.uint8)
        fake.deliver(bad, image_event(1, Role.PLAN, png(good)), protocol.Done(job=1, status=Status.OK, seconds=1.0))
        await fake.drained()
        assert not h.tasks[0].done()
        assert [n.severity for n in h.since(mark, Notice)] == ["error"]
        assert h.session.records[1].image is not None
        assert h.session.records[1].status == Status.OK
        assert [m.text for m in h.since(mark, StateShown)] == ["ready — last run ok in 1.00 s"]

        mark = len(h.messages)
        await h.session.handle(protocol.Progress(job=1, index=0, role=Role.PLAN, step=1, steps=2, elapsed=0.1,
                                                 preview=b"\x89PNG broken"))
        assert [n.severity for n in h.since(mark, Notice)] == ["error"]

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ run folders on disk


def test_two_sessions_on_one_runs_folder_in_one_second_get_their_own_folders(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two explorers sharing a runs folder, each with its job 1 entered in the same second: the folder name
    (second, job, label) is the same, so the second explorer's claim gets a suffix; each folder exists
    (claimed, empty: the engine writes into it) and still starts with the stamp history ordering reads."""
    from dit_explore.engine.core.runs import LiveRun, read_run

    real_strftime = session_module.time.strftime
    monkeypatch.setattr(session_module.time, "strftime",
                        lambda fmt, *t: "20250106-093000" if fmt == "%Y%m%d-%H%M%S" else real_strftime(fmt, *t))

    async def main() -> None:
        first, second = Harness(tmp_path), Harness(tmp_path)
        try:
            engines = [await first.ready_engine(), await second.ready_engine()]
            await first.session.run(wish())
            await second.session.run(wish())
            out_dirs = [Path(e.requests[0].out_dir or "") for e in engines]  # type: ignore[union-attr]
            runs = (tmp_path / "runs").resolve()
            assert [d.name for d in out_dirs] == ["20250106-093000-001-swap-1-2", "20250106-093000-001-swap-1-2-2"]
            assert [d.parent for d in out_dirs] == [runs, runs]
            assert all(d.is_dir() and list(d.iterdir()) == [] for d in out_dirs)
            assert [first.session.records[1].path, second.session.records[1].path] == out_dirs
            for d in out_dirs:  # each engine writes where its explorer claimed
                assert LiveRun(d, {"model": {"name": "tiny-flux"}, "plan": {"text": ""}, "prompts": ["p"]}).out == d
            assert [time.strftime("%Y%m%d-%H%M%S", time.localtime(read_run(d).started)) for d in out_dirs] == \
                ["20250106-093000"] * 2
        finally:
            await first.close()
            await second.close()

    import time

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_run_folder_that_cannot_be_made_is_a_notice_and_no_request(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where the runs folder should be")

    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        mark = len(h.messages)
        await h.session.run(wish())
        assert fake.requests == [] and h.session.records == {}
        [notice] = h.since(mark, Notice)
        assert notice.severity == "error" and notice.title == "run not started"
        assert notice.text.startswith(f"cannot make a folder for the run in {tmp_path / 'runs'}: ")

    scenario(body, tmp_path)


def test_an_engine_crash_marks_its_running_run_json_crashed(tmp_path: Path) -> None:
    """The engine died mid-run: its run.json still says running (it could not say otherwise); the session
    rewrites it to crashed, and removes a claimed folder the engine never wrote into."""
    import json

    from dit_explore.engine.core.runs import LiveRun

    async def body(h: Harness) -> None:
        a = await h.ready_engine()
        record = {"model": {"name": "tiny-flux"}, "plan": {"text": ""}, "prompts": ["p"]}
        await h.session.run(wish("first"))
        done_dir = Path(a.requests[0].out_dir or "")  # type: ignore[union-attr]
        LiveRun(done_dir, record).update(status="ok")  # as the engine writes: the first run ended ok
        a.deliver(protocol.Done(job=1, status=Status.OK, seconds=1.0, path=str(done_dir)))
        await h.session.run(wish("second"))
        await a.drained()
        running_dir = Path(a.requests[1].out_dir or "")  # type: ignore[union-attr]
        LiveRun(running_dir, record).add_png(b"an image", 0)  # the second has one image, and then...
        a.deliver(protocol.Crashed(exit_code=-9, log="/tmp/a.log", log_tail="Killed\n"))
        await a.drained()
        assert h.session.records[2].status == Status.CRASHED
        second = json.loads((running_dir / "run.json").read_text())
        assert second["status"] == "crashed" and second["images"] == ["000.png"]
        assert json.loads((done_dir / "run.json").read_text())["status"] == "ok"  # ended: untouched

        await h.session.run(wish("third"))  # a new engine; it dies before it writes anything
        b = await h.engine(1)
        b.deliver(hello(), READY)
        await b.drained()
        claimed = Path(b.requests[0].out_dir or "")  # type: ignore[union-attr]
        assert claimed.is_dir() and list(claimed.iterdir()) == []
        b.deliver(protocol.Crashed(exit_code=-9, log="/tmp/b.log", log_tail=""))
        await b.drained()
        assert not claimed.exists()  # claimed, never written: removed
        assert {job: r.status for job, r in h.session.records.items()} == {
            1: Status.OK, 2: Status.CRASHED, 3: Status.CRASHED}

    scenario(body, tmp_path)


def test_done_says_where_the_engine_wrote(tmp_path: Path) -> None:
    """An engine that found the folder taken writes into another (out-2) and says so in `done`."""

    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        await h.session.run(wish())
        claimed = h.session.records[1].path
        assert claimed is not None
        fake.deliver(protocol.Done(job=1, status=Status.OK, seconds=1.0, path=f"{claimed}-2"))
        await fake.drained()
        assert h.session.records[1].path == Path(f"{claimed}-2")

    scenario(body, tmp_path)


# ------------------------------------------------------------------------------------------ 7. sweeps


def test_a_sweep_is_a_job_like_a_run(tmp_path: Path) -> None:
    """The importance sweep: its folder under <runs>/sweeps, its progress in items, no analysis while it
    runs (the one it pre-empted is asked again after it), the cancel key, and how it ended as SweepEnded;
    an engine crash ends it as crashed."""

    async def body(h: Harness) -> None:
        fake = await h.ready_engine(similarity=None)
        assert [type(r) for r in fake.requests] == [protocol.Analyze]
        await h.session.run(SweepWish("a red fox", plans.Sampling(seed=3, steps=2)))
        sweep = fake.requests[1]
        assert isinstance(sweep, protocol.Sweep)
        assert (sweep.job, sweep.kind, sweep.prompt) == (2, "skip-each", "a red fox")
        assert sweep.sampling == plans.Sampling(seed=3, steps=2)
        out = Path(sweep.out_dir)
        assert out.parent == (h.runs_dir / "sweeps").resolve() and out.is_dir() and not any(out.iterdir())
        assert re.fullmatch(r"\d{8}-\d{6}-002-skip-each", out.name), out.name

        mark = len(h.messages)
        fake.deliver(protocol.Done(job=1, status=Status.SUPERSEDED),
                     protocol.Progress(job=2, index=0, role=Role.SWEEP, step=3, steps=11, elapsed=1.0,
                                       label="double: skip 1"))
        await fake.drained()
        assert [m.text for m in h.since(mark, StateShown)] == ["sweep 3/11: double: skip 1 (escape cancels)"]
        assert [(p.done, p.total) for p in h.since(mark, ProgressShown)] == [(3, 11)]
        await h.session.submit_analysis()  # a sweep runs: no analysis now
        assert len(fake.requests) == 2
        assert await h.session.cancel() is True and fake.cancels == [None]

        fake.deliver(protocol.Done(job=2, status=Status.OK, images=11, seconds=4.0, path=str(out)))
        await fake.drained()
        [ended] = h.since(mark, SweepEnded)
        assert (ended.record.status, ended.record.path, ended.record.done) == (Status.OK, out, 11)
        assert [m.text for m in h.since(mark, StateShown)][-1] == "ready — sweep ok in 4.0 s"
        assert fake.requests[2] == protocol.Analyze(job=3, prompts=None, sampling=plans.Sampling())
        assert h.session.records == {}  # a sweep is not a run of the history

        fake.deliver(protocol.Done(job=3, status=Status.OK))
        await fake.drained()
        await h.session.run(SweepWish("a cat", plans.Sampling()))
        mark = len(h.messages)
        fake.deliver(protocol.Crashed(exit_code=-9, log="/nonexistent/engine.log", log_tail=""))
        await fake.drained()
        [ended] = h.since(mark, SweepEnded)
        assert ended.record.job == 4 and ended.record.status == Status.CRASHED

    scenario(body, tmp_path)


def test_a_quantized_engine_says_so_when_ready(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        fake = await h.ready_engine()
        for ready, shown in (
            (protocol.Ready(device="cpu", dtype="float32", load_seconds=1.5, random_weights=False, quantization="int8"),
             "ready on cpu (float32 · int8 weights), loaded in 1.5 s"),
            (protocol.Ready(device="cuda", dtype="bfloat16", load_seconds=9.0, random_weights=True, quantization="fp8"),
             "ready on cuda (bfloat16 · random weights · FP8 weights and activations), loaded in 9.0 s"),
            (protocol.Ready(device="cuda:0", dtype="bfloat16", load_seconds=30.0, random_weights=False,
                            placement="sequential (26 of 57 blocks resident, text encoders offloaded, peak about 22 GB)"),
             "ready on cuda:0 (bfloat16 · memory sequential), loaded in 30.0 s"),
        ):
            mark = len(h.messages)
            fake.deliver(ready)
            await fake.drained()
            assert next(m.text for m in h.since(mark, StateShown)) == shown

    scenario(body, tmp_path)
