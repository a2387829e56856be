"""The engine process against its client, on tiny-flux: runs, caches, cancel, faults, crashes, soak."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import protocol
from dit_explore.engine.core.families import Defaults
from dit_explore.engine.core.protocol import EngineState, Event, Status
from dit_explore.tui.client import EngineClient, EngineError
from tests.engine.requests import (
    Runner,
    analyze,
    drain,
    module_loop,
    next_event,
    next_job,
    raw_frame,
    send_raw,
    serving,
    until_done,
    wait_ready,
)
from tests.engine.requests import run as submit_run

FAULT_ENGINE = "tests.engine.fault_engine"
SKIP = 'version = 1\n[order]\nsingle = "0-2, 7"\n'
IDENTITY = "version = 1\n"


@pytest.fixture(scope="module")
def run() -> Iterator[Runner]:
    yield from module_loop()


@pytest.fixture(scope="module")
def engine(run: Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    yield from serving(run, tmp_path_factory.mktemp("logs"), FAULT_ENGINE)


def of(events: list[Event], kind: str, **match: Any) -> list[Any]:
    return [e for e in events if kind == e.TYPE and all(getattr(e, k) == v for k, v in match.items())]


def test_hello_describes_the_model_and_ready_follows(engine: EngineClient) -> None:
    hello = engine.hello
    assert hello is not None and hello.protocol == protocol.PROTOCOL_VERSION
    assert hello.family == "flux"
    assert [(s.name, s.blocks) for s in hello.layout.stacks] == [("double", 4), ("single", 8)]
    assert hello.defaults == Defaults(steps=2, guidance=0.0, width=64, height=64, max_sequence_length=32)
    assert engine.ready is not None and engine.ready.device == "cpu" and engine.state == EngineState.READY


def test_run_streams_progress_images_and_writes_the_run_directory(engine: EngineClient, run: Any, tmp_path: Path) -> None:
    drain(engine)
    out = tmp_path / "run1"
    job = run(submit_run(engine, SKIP, ["a red cube"], {"steps": 3, "seed": 7}, out_dir=out))
    events = run(until_done(engine, job))
    progress = of(events, "progress", role="plan")
    assert [e.step for e in progress] == [1, 2, 3]
    preview = Image.open(io.BytesIO(progress[0].preview))
    assert preview.size == (16, 16)  # latent resolution: 64 px / the tiny VAE's factor 4
    plan_image, baseline_image = of(events, "image", role="plan"), of(events, "image", role="baseline")
    assert len(plan_image) == len(baseline_image) == 1
    assert plan_image[0].block_runs.per_step == ({"double": 4, "single": 4},) * 3
    assert len(plan_image[0].timing.transformer_steps) == 3
    done = of(events, "done")[0]
    assert done.status == "ok" and done.blocks_restored is True
    # After the images, the plan against the full model side by side, on the same inputs, warm.
    [speed] = of(events, "speed")
    assert events.index(speed) > events.index(baseline_image[0]) and (speed.steps, speed.active) == (3, 3)
    assert speed.calls >= 3 and [len(speed.blocks[s]) for s in ("double", "single")] == [4, 8]
    record = json.loads((out / "run.json").read_text())
    assert record["speed"]["plan"] == speed.plan and record["speed"]["full"] == speed.full
    assert record["status"] == "ok"
    assert record["images"] == ["000.png"] and record["baseline_images"] == ["baseline-000.png"]
    assert record["plan"]["orders"]["single"] == "0-2, 7"
    assert (out / "000.png").read_bytes() == plan_image[0].png
    stored = plans.load(out / "000.png")
    assert stored.sampling.seed == 7 and stored.sampling.steps == 3 and stored.order("single") == (0, 1, 2, 7)


PER_STEP = ('version = 2\n[[steps]]\nsteps = "1, 3"\n[steps.order]\nsingle = "0-2, 7"\n'
            '[[steps]]\nsteps = "2"\n[steps.order]\ndouble = "0"\n')


def test_a_per_step_plan_runs_each_steps_orders_and_times_the_steps_it_changes(engine: EngineClient, run: Any,
                                                                                tmp_path: Path) -> None:
    drain(engine)
    out = tmp_path / "per-step"
    job = run(submit_run(engine, PER_STEP, ["a red cube"], {"steps": 4, "seed": 7}, out_dir=out))
    events = run(until_done(engine, job))
    assert of(events, "done")[0].status == "ok"
    [image] = of(events, "image", role="plan")
    assert image.block_runs.per_step == ({"double": 4, "single": 8}, {"double": 4, "single": 4},
                                         {"double": 1, "single": 8}, {"double": 4, "single": 4})
    [baseline] = of(events, "image", role="baseline")
    assert baseline.png != image.png  # not the identity: the baseline is the full model's image, not the plan's
    # Steps 1-3 change something (two sets of orders, each timed); step 0 runs the full model.
    [speed] = of(events, "speed")
    assert (speed.steps, speed.active) == (4, 3) and speed.plan > 0
    record = json.loads((out / "run.json").read_text())
    assert record["plan"]["step_orders"] == [
        {"steps": "1,3", "orders": {"double": "0-3", "single": "0-2, 7"}},
        {"steps": "2", "orders": {"double": "0", "single": "0-7"}}]
    assert plans.load(out / "000.png").step_orders == plans.loads(PER_STEP).step_orders


def test_baseline_and_text_embeddings_are_cached(engine: EngineClient, run: Any) -> None:
    drain(engine)
    first = run(until_done(engine, run(submit_run(engine, IDENTITY, ["cache me"], {"seed": 1}))))
    second = run(until_done(engine, run(submit_run(engine, SKIP, ["cache me"], {"seed": 1}))))
    base1 = of(first, "image", role="baseline")[0]
    base2 = of(second, "image", role="baseline")[0]
    assert base1.cached is True  # the identity plan's own image is its baseline
    assert base2.cached is True and base2.png == base1.png
    assert of(second, "progress", role="baseline") == []  # no baseline work the second time
    assert of(second, "image", role="plan")[0].timing.text_encode_cached is True
    assert of(first, "image", role="plan")[0].png == base1.png


def test_cancel_stops_the_run_and_the_next_run_works(engine: EngineClient, run: Any) -> None:
    drain(engine)
    job = run(submit_run(engine, IDENTITY, ["long"], {"steps": 1000}, baseline=False))

    async def cancel_after_first_step() -> list[Event]:
        while True:
            event = await next_event(engine, 30)
            if event.TYPE == "progress" and event.job == job:
                break
        await engine.cancel(job)
        return await until_done(engine, job)

    events = run(cancel_after_first_step())
    done = of(events, "done")[0]
    assert done.status == "cancelled" and done.blocks_restored is True
    assert len(of(events, "progress")) <= 1  # it lands between blocks: at most the step in flight ends
    after = run(until_done(engine, run(submit_run(engine, SKIP, ["after cancel"], baseline=False))))
    assert of(after, "done")[0].status == "ok"


def test_latest_run_wins_and_stale_events_are_dropped(engine: EngineClient, run: Any) -> None:
    drain(engine)

    async def scenario() -> tuple[int, int, list[Event]]:
        first = await submit_run(engine, IDENTITY, ["first"], {"steps": 1000}, baseline=False)
        while (await next_event(engine, 30)).TYPE != "progress":
            pass
        drain(engine)
        second = await submit_run(engine, SKIP, ["second"], baseline=False)
        return first, second, await until_done(engine, second)

    first, second, events = run(scenario())
    # Of the superseded job only its `done` comes through, saying how it ended.
    assert [(e.TYPE, e.status) for e in events if getattr(e, "job", None) == first] == [("done", Status.SUPERSEDED)]
    assert all(getattr(e, "job", None) in (None, first, second) for e in events)
    assert of(events, "done", job=second)[0].status == "ok"
    assert of(events, "image")[0].prompt == "second"


def test_out_of_memory_mid_run_is_reported_and_the_engine_serves_on(engine: EngineClient, run: Any) -> None:
    drain(engine)
    events = run(until_done(engine, run(submit_run(engine, SKIP, ["FAULT: boom"], baseline=False))))
    error, done = of(events, "error")[0], of(events, "done")[0]
    assert "out of memory" in error.message and "\n" not in error.message
    assert error.log == str(engine.log_path)
    assert done.status == "error" and done.blocks_restored is True
    logged = engine.log_path.read_text()
    assert "OutOfMemoryError" in logged  # the traceback went to the log, with the job's plan and settings
    assert 'single = "0-2, 7"' in logged and "steps=2" in logged
    ok = run(until_done(engine, run(submit_run(engine, SKIP, ["healthy"], baseline=False))))
    assert of(ok, "done")[0].status == "ok"


BAD_RUNS = [
    ({"plan": 'version = 1\n[order]\nsingle = "0-9"\n'}, "block index out of range at '8-9'"),
    ({"plan": 'version = 1\n[order]\nsingle = "0-[1"\n'}, "syntax error"),
    ({"prompts": ["  "]}, "a prompt must not be empty"),
    ({"prompts": []}, "give at least one prompt"),
    ({"sampling": {"width": 60}}, "not a multiple of 8"),
    ({"sampling": {"steps": 0}}, "must be at least 1"),
    ({"sampling": {"bogus": 1}}, "run.sampling: unknown field 'bogus'"),
    ({"sampling": {"prompt": "p"}}, "send prompts in 'prompts'"),
    ({"plan": 3}, "run.plan: expected a string, got int"),
    ({"job": "x"}, "run.job: expected an integer, got str"),
]


@pytest.mark.parametrize(("change", "message"), BAD_RUNS)
def test_invalid_runs_get_an_error_and_a_done(engine: EngineClient, run: Any, change: dict[str, Any], message: str) -> None:
    drain(engine)
    job = next_job()
    engine._latest_job = job  # as submit() would: the raw request below bypasses it
    request = {"type": "run", "job": job, "plan": IDENTITY, "prompts": ["p"], **change}
    run(send_raw(engine, raw_frame(request)))
    if change.get("job") == "x":
        event = run(next_event(engine, 10))
        assert event.TYPE == "error" and event.job is None and message in event.message
        return
    events = run(until_done(engine, job, timeout=10))
    assert message in of(events, "error")[0].message
    assert of(events, "done")[0].status == "error"
    # The log has the reason and the request that caused it.
    assert f"refused a 'run' request (job {job}): " in engine.log_path.read_text()


def test_malformed_frames_are_errors_not_crashes(engine: EngineClient, run: Any) -> None:
    drain(engine)
    oversized = protocol.HEADER.pack(protocol.MAGIC, protocol.MAX_JSON + 1, 0) + b" " * (protocol.MAX_JSON + 1)
    bad_json = protocol.HEADER.pack(protocol.MAGIC, 5, 0) + b"{nope"
    no_type = raw_frame({"hello": 1})
    unknown = raw_frame({"type": "launch"})
    garbage = b"\x00\xffnot a frame at all"
    for data in (garbage, oversized, bad_json, no_type, unknown):
        run(send_raw(engine, data))
    messages = [run(next_event(engine, 10)) for _ in range(5)]
    assert [m.TYPE for m in messages] == ["error"] * 5
    texts = " | ".join(m.message for m in messages)
    for fragment in ("bad frame header", "frame too large", "malformed JSON", "'type'", "unknown request type 'launch'"):
        assert fragment in texts
    ok = run(until_done(engine, run(submit_run(engine, SKIP, ["still alive"], baseline=False))))
    assert of(ok, "done")[0].status == "ok"


SOAK_WARMUP, SOAK_RUNS = 15, 45  # runs before the first RSS reading, and after it
SOAK_GROWTH_LIMIT = 24 << 20  # bytes; a 1 MB-per-run leak grows RSS by 45 MB over the measured runs


def soak(engine: EngineClient, run: Any, prompt_prefix: str = "") -> tuple[int, list[protocol.Done]]:
    """Random plans, one after another: (RSS growth over the measured runs, every run's `done`)."""
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
        assert engine.last_pong is not None and engine.last_pong.rss is not None
        return engine.last_pong.rss

    async def runs() -> tuple[int, list[protocol.Done]]:
        dones = []
        rss_start = 0
        for i in range(SOAK_WARMUP + SOAK_RUNS):
            text = f'version = 1\n[order]\ndouble = "{random_order(4)}"\nsingle = "{random_order(8)}"\n'
            job = await submit_run(engine, text, [f"{prompt_prefix}prompt {i % 7}"], {"seed": i, "steps": 1},
                                   baseline=i % 10 == 0)
            dones.append(of(await until_done(engine, job), "done")[0])
            if i == SOAK_WARMUP - 1:
                rss_start = await pong_rss()
        return await pong_rss() - rss_start, dones

    return run(runs())  # type: ignore[no-any-return]


def test_soak_random_plans_without_leaks(engine: EngineClient, run: Any) -> None:
    growth, dones = soak(engine, run)
    assert [d.status for d in dones] == ["ok"] * (SOAK_WARMUP + SOAK_RUNS)
    assert all(d.blocks_restored for d in dones)
    assert growth < SOAK_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB over {SOAK_RUNS} runs"


def test_the_soak_catches_a_leak_of_one_megabyte_per_run(engine: EngineClient, run: Any) -> None:
    """The same soak against an engine that keeps 1 MB per run (the fault engine's LEAK: prompts)."""
    growth, dones = soak(engine, run, prompt_prefix="LEAK: ")
    assert [d.status for d in dones] == ["ok"] * (SOAK_WARMUP + SOAK_RUNS)
    assert growth >= SOAK_GROWTH_LIMIT, f"a 1 MB-per-run leak went unnoticed: RSS grew by {growth >> 20} MiB"


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
    async def scenario() -> tuple[Event, list[Event]]:
        client = fresh_client(tmp_path)
        await client.start()
        await wait_ready(client)
        await submit_run(client, IDENTITY, ["long"], {"steps": 1000}, baseline=False)
        while (await next_event(client, 30)).TYPE != "progress":
            pass
        os.kill(client.pid, signal.SIGKILL)
        while True:  # noticed by the reader at the end of the pipe, not by the (slower) heartbeat
            event = await next_event(client, 30)
            if event.TYPE == "crashed":
                break
        assert client.state == EngineState.CRASHED
        with pytest.raises(EngineError):
            await submit_run(client, IDENTITY, ["no engine"])
        await client.shutdown()
        await client.start()
        await wait_ready(client)
        after = await until_done(client, await submit_run(client, SKIP, ["after restart"], baseline=False))
        await client.shutdown()
        return event, after

    crashed, after = asyncio.run(scenario())
    assert crashed.exit_code == -signal.SIGKILL
    assert "engine pid" in crashed.log_tail
    assert of(after, "done")[0].status == "ok"


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
        await wait_ready(client)
        pid = client.pid
        assert pid is not None
        os.kill(pid, signum)
        while (event := await next_event(client, 10)).TYPE != "crashed":
            pass
        await client.shutdown()
        assert gone(pid)
        return event.exit_code

    assert asyncio.run(scenario()) == 0


def test_a_wedged_engine_is_marked_unresponsive_then_responsive(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        client = fresh_client(tmp_path, heartbeat=0.1, unresponsive_after=0.6)
        await client.start()
        await wait_ready(client)
        drain(client)
        os.kill(client.pid, signal.SIGSTOP)
        seen = []
        try:
            while (await next_event(client, 10)).TYPE != "unresponsive":
                pass
            seen.append(client.state)
        finally:
            os.kill(client.pid, signal.SIGCONT)
        while (await next_event(client, 10)).TYPE != "responsive":
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


def test_a_placement_that_cannot_apply_is_one_fatal_line_before_loading(tmp_path: Path) -> None:
    """--memory reaches the engine (hello echoes it); on the CPU only `full` applies: one fatal error line,
    before any weights load (no `loading` of a component follows)."""
    async def scenario() -> tuple[protocol.Hello, list[Any]]:
        client = EngineClient("toy-flux", device="cpu", memory="sequential", log_path=tmp_path / "e.log")
        hello = await client.start()
        seen: list[Any] = []
        async for event in client.events():
            seen.append(event)
            if isinstance(event, protocol.Error) and event.fatal:
                break
        await client.shutdown()
        return hello, seen

    hello, seen = asyncio.run(scenario())
    assert hello.memory == "sequential"
    errors = [e for e in seen if isinstance(e, protocol.Error)]
    assert len(errors) == 1 and "\n" not in errors[0].message
    assert errors[0].message.startswith("--memory sequential moves weights between host memory and a GPU")
    assert not any(isinstance(e, protocol.Loading) and e.stage.startswith("loading ") for e in seen)


def test_preview_shows_the_latent_image(engine: EngineClient, run: Any) -> None:
    """The preview is the linear latent->RGB map of the step's latents, not a decoded image."""
    drain(engine)
    events = run(until_done(engine, run(submit_run(engine, IDENTITY, ["preview"], {"steps": 4}, baseline=False))))
    previews = [np.asarray(Image.open(io.BytesIO(e.preview))) for e in of(events, "progress") if e.preview]
    assert len(previews) == 3  # steps 1-3; the last step is followed by the real image
    assert all(p.shape == (16, 16, 3) for p in previews)
    assert not np.array_equal(previews[0], previews[-1])  # the latents move between steps


def test_analysis_is_served_from_the_disk_cache_when_the_key_matches(engine: EngineClient, run: Any) -> None:
    from dit_explore.engine.core.resolve import cache_dir

    drain(engine)

    def analysis(**kwargs: Any) -> Event:
        events = run(until_done(engine, run(analyze(engine, **kwargs))))
        assert of(events, "done")[0].status == "ok"
        return of(events, "analysis")[0]

    first = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11})
    again = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11})
    other_seed = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 12})
    forced = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11}, use_cache=False)
    assert [e.cached for e in (first, again, other_seed, forced)] == [False, True, False, False]
    assert again.result.matrix == first.result.matrix
    assert other_seed.result.matrix != first.result.matrix
    regrouped = analysis(prompts=["cache key prompt"], sampling={"steps": 2, "seed": 11}, groups=2)
    assert regrouped.cached is True and len(regrouped.result.stacks["single"].groups) == 2
    assert len(list((cache_dir() / "similarity").glob("*.json"))) >= 2
    progress = of(run(until_done(engine, run(analyze(engine, prompts=["p1", "p2"], sampling={"steps": 2})))),
                  "progress", role="analyze")
    assert [(e.index, e.step) for e in progress] == [(0, 1), (0, 2), (1, 1), (1, 2)]
