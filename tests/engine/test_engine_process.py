"""The engine process against its client, on tiny-flux: runs, caches, cancel, faults, crashes, soak."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from engine import plan as plans
from engine import protocol
from engine.client import CRASHED, READY, EngineClient, EngineError
from engine.protocol import Event

T = TypeVar("T")
FAULT_ENGINE = "tests.engine.fault_engine"
SKIP = 'version = 1\n[order]\nsingle = "0-2, 7"\n'
IDENTITY = "version = 1\n"


@pytest.fixture(scope="module")
def run() -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """One event loop for the module, so an engine can outlive a test."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture(scope="module")
def engine(run: Callable[[Coroutine[Any, Any, Any]], Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    log = tmp_path_factory.mktemp("logs") / "engine.log"
    client = EngineClient("tiny-flux", log_path=log, module=FAULT_ENGINE)
    run(client.start())
    run(client.wait_ready(120))
    yield client
    run(client.shutdown())


async def until_done(client: EngineClient, job: int, timeout: float = 60) -> list[Event]:
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = await client.next_event(max(0.1, deadline - time.monotonic()))
        events.append(event)
        if event.type == "done" and event.job == job:
            return events
        if event.type == "crashed":
            raise AssertionError(f"engine crashed: {event.data}")


def drain(client: EngineClient) -> list[Event]:
    out = []
    while not client._events.empty():
        out.append(client._events.get_nowait())
    return out


def of(events: list[Event], kind: str, **match: Any) -> list[Event]:
    return [e for e in events if e.type == kind and all(e.get(k) == v for k, v in match.items())]


def test_hello_describes_the_model_and_ready_follows(engine: EngineClient) -> None:
    hello = engine.hello
    assert hello is not None and hello.get("protocol") == protocol.PROTOCOL_VERSION
    assert hello.get("family") == "flux"
    assert [(s["name"], s["blocks"]) for s in hello.get("layout")["stacks"]] == [("double", 4), ("single", 8)]
    assert hello.get("defaults") == {"steps": 2, "guidance": 0.0, "width": 64, "height": 64}
    assert engine.ready is not None and engine.ready.get("device") == "cpu" and engine.state == READY


def test_run_streams_progress_images_and_writes_the_run_directory(engine: EngineClient, run: Any, tmp_path: Path) -> None:
    drain(engine)
    out = tmp_path / "run1"
    job = run(engine.run(SKIP, ["a red cube"], {"steps": 3, "seed": 7}, out_dir=out))
    events = run(until_done(engine, job))
    progress = of(events, "progress", role="plan")
    assert [e.get("step") for e in progress] == [1, 2, 3]
    preview = Image.open(io.BytesIO(progress[0].binary))
    assert preview.size == (16, 16)  # latent resolution: 64 px / the tiny VAE's factor 4
    plan_image, baseline_image = of(events, "image", role="plan"), of(events, "image", role="baseline")
    assert len(plan_image) == len(baseline_image) == 1
    assert plan_image[0].get("block_runs")["per_step"] == [{"double": 4, "single": 4}] * 3
    assert len(plan_image[0].get("timing")["transformer_steps"]) == 3
    done = of(events, "done")[0]
    assert done.get("status") == "ok" and done.get("blocks_restored") is True
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok"
    assert record["images"] == ["000.png"] and record["baseline_images"] == ["baseline-000.png"]
    assert record["plan"]["orders"]["single"] == "0-2, 7"
    assert (out / "000.png").read_bytes() == plan_image[0].binary
    stored = plans.load(out / "000.png")
    assert stored.sampling.seed == 7 and stored.sampling.steps == 3 and stored.order("single") == (0, 1, 2, 7)


def test_baseline_and_text_embeddings_are_cached(engine: EngineClient, run: Any) -> None:
    drain(engine)
    first = run(until_done(engine, run(engine.run(IDENTITY, ["cache me"], {"seed": 1}))))
    second = run(until_done(engine, run(engine.run(SKIP, ["cache me"], {"seed": 1}))))
    base1 = of(first, "image", role="baseline")[0]
    base2 = of(second, "image", role="baseline")[0]
    assert base1.get("cached") is True  # the identity plan's own image is its baseline
    assert base2.get("cached") is True and base2.binary == base1.binary
    assert of(second, "progress", role="baseline") == []  # no baseline work the second time
    assert of(second, "image", role="plan")[0].get("timing")["text_encode_cached"] is True
    assert of(first, "image", role="plan")[0].binary == base1.binary


def test_cancel_stops_the_run_and_the_next_run_works(engine: EngineClient, run: Any) -> None:
    drain(engine)
    job = run(engine.run(IDENTITY, ["long"], {"steps": 1000}, baseline=False))

    async def cancel_after_first_step() -> list[Event]:
        while True:
            event = await engine.next_event(30)
            if event.type == "progress" and event.job == job:
                break
        await engine.cancel(job)
        return await until_done(engine, job)

    events = run(cancel_after_first_step())
    done = of(events, "done")[0]
    assert done.get("status") == "cancelled" and done.get("blocks_restored") is True
    assert len(of(events, "progress")) <= 1  # it lands between blocks: at most the step in flight ends
    after = run(until_done(engine, run(engine.run(SKIP, ["after cancel"], baseline=False))))
    assert of(after, "done")[0].get("status") == "ok"


def test_latest_run_wins_and_stale_events_are_dropped(engine: EngineClient, run: Any) -> None:
    drain(engine)

    async def scenario() -> tuple[int, int, list[Event]]:
        first = await engine.run(IDENTITY, ["first"], {"steps": 1000}, baseline=False)
        while (await engine.next_event(30)).type != "progress":
            pass
        drain(engine)
        second = await engine.run(SKIP, ["second"], baseline=False)
        return first, second, await until_done(engine, second)

    first, second, events = run(scenario())
    assert all(e.job in (None, second) for e in events)
    assert of(events, "done")[0].get("status") == "ok"
    assert of(events, "image")[0].get("prompt") == "second"


def test_out_of_memory_mid_run_is_reported_and_the_engine_serves_on(engine: EngineClient, run: Any) -> None:
    drain(engine)
    events = run(until_done(engine, run(engine.run(SKIP, ["FAULT: boom"], baseline=False))))
    error, done = of(events, "error")[0], of(events, "done")[0]
    assert "out of memory" in error.get("message") and "\n" not in error.get("message")
    assert error.get("log") == str(engine.log_path)
    assert done.get("status") == "error" and done.get("blocks_restored") is True
    assert "OutOfMemoryError" in engine.log_path.read_text()  # the traceback went to the log
    ok = run(until_done(engine, run(engine.run(SKIP, ["healthy"], baseline=False))))
    assert of(ok, "done")[0].get("status") == "ok"


BAD_RUNS = [
    ({"plan": 'version = 1\n[order]\nsingle = "0-9"\n'}, "block index out of range at '8-9'"),
    ({"plan": 'version = 1\n[order]\nsingle = "0-[1"\n'}, "syntax error"),
    ({"prompts": ["  "]}, "a prompt must not be empty"),
    ({"prompts": []}, "non-empty list"),
    ({"sampling": {"width": 60}}, "not a multiple of 8"),
    ({"sampling": {"steps": 0}}, "must be at least 1"),
    ({"sampling": {"bogus": 1}}, "unknown key"),
    ({"job": "x"}, "'job' must be an integer"),
]


@pytest.mark.parametrize(("change", "message"), BAD_RUNS)
def test_invalid_runs_get_an_error_and_a_done(engine: EngineClient, run: Any, change: dict[str, Any], message: str) -> None:
    drain(engine)
    engine._latest_job += 1
    job = engine._latest_job
    request = {"type": "run", "job": job, "plan": IDENTITY, "prompts": ["p"], **change}
    run(engine.send_raw(protocol.encode(request)))
    if change.get("job") == "x":
        event = run(engine.next_event(10))
        assert event.type == "error" and event.job is None and message in event.get("message")
        return
    events = run(until_done(engine, job, timeout=10))
    assert message in of(events, "error")[0].get("message")
    assert of(events, "done")[0].get("status") == "error"


def test_malformed_frames_are_errors_not_crashes(engine: EngineClient, run: Any) -> None:
    drain(engine)
    oversized = protocol.HEADER.pack(protocol.MAGIC, protocol.MAX_JSON + 1, 0) + b" " * (protocol.MAX_JSON + 1)
    bad_json = protocol.HEADER.pack(protocol.MAGIC, 5, 0) + b"{nope"
    no_type = protocol.encode({"hello": 1})
    unknown = protocol.encode({"type": "launch"})
    garbage = b"\x00\xffnot a frame at all"
    for data in (garbage, oversized, bad_json, no_type, unknown):
        run(engine.send_raw(data))
    messages = [run(engine.next_event(10)) for _ in range(5)]
    assert [m.type for m in messages] == ["error"] * 5
    texts = " | ".join(m.get("message") for m in messages)
    for fragment in ("bad frame header", "frame too large", "malformed JSON", "'type'", "unknown request type 'launch'"):
        assert fragment in texts
    ok = run(until_done(engine, run(engine.run(SKIP, ["still alive"], baseline=False))))
    assert of(ok, "done")[0].get("status") == "ok"


def test_soak_200_random_plans_without_leaks(engine: EngineClient, run: Any) -> None:
    drain(engine)
    rng = random.Random(0)

    def random_order(n: int) -> str:
        items = []
        for _ in range(rng.randint(0, 5)):
            a, b = rng.randrange(n), rng.randrange(n)
            kind = rng.choice(["span", "repeat", "group"])
            if kind == "span":
                items.append(f"{a}-{b}")
            elif kind == "repeat":
                items.append(f"{a}*{rng.randint(1, 3)}")
            elif a != b:
                items.append(f"[{min(a, b)}-{max(a, b)}]x{rng.randint(1, 3)}")
        return ", ".join(items)

    async def pong_rss() -> int:
        before = engine.last_pong
        while engine.last_pong is before:
            await asyncio.sleep(0.05)
        assert engine.last_pong is not None
        return int(engine.last_pong.get("rss"))

    async def soak() -> tuple[int, int, list[Event]]:
        dones = []
        rss_start = 0
        for i in range(200):
            text = f'version = 1\n[order]\ndouble = "{random_order(4)}"\nsingle = "{random_order(8)}"\n'
            job = await engine.run(text, [f"prompt {i % 7}"], {"seed": i}, baseline=i % 10 == 0)
            dones.append(of(await until_done(engine, job), "done")[0])
            if i == 19:
                rss_start = await pong_rss()
        return rss_start, await pong_rss(), dones

    rss_start, rss_end, dones = run(soak())
    assert [d.get("status") for d in dones] == ["ok"] * 200
    assert all(d.get("blocks_restored") for d in dones)
    assert rss_end - rss_start < 64 << 20, f"RSS grew by {(rss_end - rss_start) >> 20} MiB over 180 runs"


# --------------------------------------------------------------- process lifecycle (an engine each)


def fresh_client(tmp_path: Path, **kwargs: Any) -> EngineClient:
    return EngineClient("tiny-flux", log_path=tmp_path / "engine.log", **kwargs)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_sigkill_mid_run_is_reported_and_restart_recovers(tmp_path: Path) -> None:
    async def scenario() -> tuple[Event, float, list[Event]]:
        client = fresh_client(tmp_path)
        await client.start()
        await client.wait_ready(120)
        job = await client.run(IDENTITY, ["long"], {"steps": 1000}, baseline=False)
        while (await client.next_event(30)).type != "progress":
            pass
        os.kill(client.pid, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            event = await client.next_event(2.0)  # must be reported within 2 s
            if event.type == "crashed":
                break
        latency = time.monotonic() - killed
        assert client.state == CRASHED
        with pytest.raises(EngineError):
            await client.run(IDENTITY, ["no engine"])
        await client.restart()
        await client.wait_ready(120)
        after = await until_done(client, await client.run(SKIP, ["after restart"], baseline=False))
        await client.shutdown()
        return event, latency, after

    crashed, latency, after = asyncio.run(scenario())
    assert crashed.get("exit_code") == -signal.SIGKILL
    assert "engine pid" in crashed.get("log_tail")
    assert latency < 2.0
    assert of(after, "done")[0].get("status") == "ok"


def test_engine_exits_when_stdin_closes_even_while_loading(tmp_path: Path) -> None:
    async def scenario() -> int:
        client = fresh_client(tmp_path)
        await client.start()  # returns at hello: the weights are still loading
        pid = client.pid
        assert client._proc is not None and client._proc.stdin is not None
        client._proc.stdin.close()  # like a dying TUI: no shutdown request, just EOF
        await asyncio.wait_for(client._proc.wait(), 20)
        exit_code = client._proc.returncode
        await client.shutdown()
        assert pid is not None and gone(pid)
        return exit_code  # type: ignore[return-value]

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_exit_cleanly(tmp_path: Path, signum: int) -> None:
    async def scenario() -> int | None:
        client = fresh_client(tmp_path)
        await client.start()
        await client.wait_ready(120)
        pid = client.pid
        assert pid is not None
        os.kill(pid, signum)
        while (event := await client.next_event(10)).type != "crashed":
            pass
        await client.shutdown()
        assert gone(pid)
        return event.get("exit_code")

    assert asyncio.run(scenario()) == 0


def test_a_wedged_engine_is_marked_unresponsive_then_responsive(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        client = fresh_client(tmp_path, heartbeat=0.1, unresponsive_after=0.6)
        await client.start()
        await client.wait_ready(120)
        drain(client)
        os.kill(client.pid, signal.SIGSTOP)
        seen = []
        try:
            while (event := await client.next_event(10)).type != "unresponsive":
                pass
            seen.append(client.state)
        finally:
            os.kill(client.pid, signal.SIGCONT)
        while (event := await client.next_event(10)).type != "responsive":
            pass
        seen.append(client.state)
        await client.shutdown()
        return seen

    assert asyncio.run(scenario()) == ["unresponsive", "ready"]


def test_unknown_model_fails_start_with_one_line(tmp_path: Path) -> None:
    async def scenario() -> str:
        client = EngineClient("no-such-model", log_path=tmp_path / "e.log")
        with pytest.raises(EngineError) as info:
            await client.start()
        await client.shutdown()
        return str(info.value)

    message = asyncio.run(scenario())
    assert "unknown model 'no-such-model'" in message and "\n" not in message


def test_preview_shows_the_latent_image(engine: EngineClient, run: Any) -> None:
    """The preview is the linear latent->RGB map of the step's latents, not a decoded image."""
    drain(engine)
    events = run(until_done(engine, run(engine.run(IDENTITY, ["preview"], {"steps": 4}, baseline=False))))
    previews = [np.asarray(Image.open(io.BytesIO(e.binary))) for e in of(events, "progress") if e.binary]
    assert len(previews) == 3  # steps 1-3; the last step is followed by the real image
    assert all(p.shape == (16, 16, 3) for p in previews)
    assert not np.array_equal(previews[0], previews[-1])  # the latents move between steps


def test_analysis_is_served_from_the_disk_cache_when_the_key_matches(engine: EngineClient, run: Any) -> None:
    from engine.resolve import cache_dir

    drain(engine)

    def analysis(**kwargs: Any) -> Event:
        events = run(until_done(engine, run(engine.analyze(**kwargs))))
        assert of(events, "done")[0].get("status") == "ok"
        return of(events, "analysis")[0]

    first = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11})
    again = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11})
    other_seed = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 12})
    forced = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11}, use_cache=False)
    assert [e.get("cached") for e in (first, again, other_seed, forced)] == [False, True, False, False]
    assert again.get("result")["all"]["matrix"] == first.get("result")["all"]["matrix"]
    assert other_seed.get("result")["all"]["matrix"] != first.get("result")["all"]["matrix"]
    regrouped = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11}, groups=2)
    assert regrouped.get("cached") is True and len(regrouped.get("result")["stacks"]["single"]["groups"]) == 2
    assert len(list((cache_dir() / "similarity").glob("*.json"))) >= 2
    progress = of(run(until_done(engine, run(engine.analyze(prompts=["p1", "p2"], sampling={"steps": 2})))),
                  "progress", role="analyze")
    assert [(e.get("index"), e.get("step")) for e in progress] == [(0, 1), (0, 2), (1, 1), (1, 2)]
