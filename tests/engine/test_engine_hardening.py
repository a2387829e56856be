"""The engine process against hostile or broken input and a hostile world: every bad request is an
`error` (with `done` for a job) and the engine goes on answering pings; a full disk is the run's error;
NaN latents are an error that says why; a reader that cannot go on ends the process (non-zero, logged)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import EngineState, Event, Status
from dit_explore.tui.client import EngineClient
from tests.engine.requests import (
    Runner,
    answers_ping,
    drain,
    module_loop,
    next_event,
    next_job,
    raw_frame,
    record_pongs,
    send_raw,
    serving,
    until_done,
    wait_ready,
)
from tests.engine.requests import run as submit_run

FAULT_ENGINE = "tests.engine.fault_engine"
READER_FAULT_PING = 404_404  # fault_engine.py's (importing that module would start an engine)
IDENTITY = "version = 1\n"
SKIP = 'version = 1\n[order]\nsingle = "0-2, 7"\n'


@pytest.fixture(scope="module")
def run() -> Iterator[Runner]:
    yield from module_loop()


@pytest.fixture(scope="module")
def engine(run: Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    for client in serving(run, tmp_path_factory.mktemp("logs"), FAULT_ENGINE):
        record_pongs(client)
        yield client


def of(events: list[Event], kind: str, **match: Any) -> list[Any]:
    return [e for e in events if kind == e.TYPE and all(getattr(e, k) == v for k, v in match.items())]


def frame_of(payload: bytes, binary: bytes = b"") -> bytes:
    return protocol.HEADER.pack(protocol.MAGIC, len(payload), len(binary)) + payload + binary


def run_request(job: int, **fields: Any) -> dict[str, Any]:
    return {"type": "run", "job": job, "plan": IDENTITY, "prompts": ["p"], **fields}


# Each: (what, the bytes sent, a fragment of the error it must get, whether it is a job that gets `done`).
# Before the fix, those marked (*) ended the reader thread (pings, cancel and shutdown went unanswered),
# or, for the 5000-digit ping id, made the engine exit.
TRIGGERS: list[tuple[str, Any, str, bool]] = [
    ("deeply nested JSON", lambda job: frame_of(b'{"type": "ping", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
     "malformed JSON in frame: RecursionError", False),
    ("nested JSON in an unknown field of a run", lambda job: frame_of(
        json.dumps(run_request(job)).encode()[:-1] + b', "x": ' + b"[" * 900 + b"]" * 900 + b"}"),
     "run: unknown field 'x'", True),
    ("(*) a plan with a 5000-digit index", lambda job: raw_frame(run_request(
        job, plan='version = 1\n[order]\nsingle = "' + "9" * 5000 + '"\n')), "a block index must be at most", True),
    ("(*) a nested TOML plan", lambda job: raw_frame(run_request(job, plan="version = 1\nx = " + "[" * 5000 + "]" * 5000)),
     "nested too deeply", True),
    ("(*) a ping with a 5000-digit id", lambda job: frame_of(b'{"type": "ping", "id": ' + b"9" * 5000 + b"}"),
     "malformed JSON in frame: ValueError: Exceeds the limit (4300 digits)", False),
    ("an unknown request type of 4 MiB", lambda job: raw_frame({"type": "x" * (protocol.MAX_JSON - 100)}),
     "unknown request type 'xxxxxxxx", False),
    ("(*) an unknown field whose echo would not fit in a frame", lambda job: raw_frame(
        {"type": "ping", "id": 1, "\\" * ((protocol.MAX_JSON - 100) // 2): 1}), "ping: unknown field '\\\\\\\\", False),
    ("(*) a header declaring 2 GiB", lambda job: protocol.HEADER.pack(protocol.MAGIC, 1 << 31, 0),
     "frame too large: 2147483648 bytes of JSON", False),
    ("(*) a frame cut short", lambda job: protocol.HEADER.pack(protocol.MAGIC, 100, 0) + b'{"type": "ping", "i',
     "frame cut short", False),
    ("(*) a frame with binary", lambda job: frame_of(b'{"type": "ping", "id": 1}', b"\x89PNG" * 1000),
     "4000 bytes of binary (max 0)", False),
    ("(*) a cancel of a job the engine never had", lambda job: raw_frame({"type": "cancel", "job": 10**12}),
     "cancel: there is no job 1000000000000", False),
    ("(*) a cancel with nothing to cancel", lambda job: raw_frame({"type": "cancel", "job": None}),
     "cancel: no job is running or queued", False),
]


@pytest.mark.parametrize(("what", "data", "fragment", "is_job"), TRIGGERS, ids=[t[0] for t in TRIGGERS])
def test_bad_input_is_an_error_and_the_engine_answers_the_next_ping(
        engine: EngineClient, run: Runner, what: str, data: Any, fragment: str, is_job: bool) -> None:
    drain(engine)
    job = next_job()
    engine._latest_job = job  # as submit() would: the raw request bypasses it
    run(send_raw(engine, data(job)))
    assert run(answers_ping(engine)), f"no pong after {what}"
    events = drain(engine)
    errors = of(events, "error")
    assert any(fragment in e.message for e in errors), (fragment, [e.message[:300] for e in errors])
    assert all("\n" not in e.message and len(e.message) <= 2100 and not e.fatal for e in errors)
    if is_job:
        [done] = of(events, "done", job=job)
        assert done.status == Status.ERROR and fragment in (done.message or "")
    assert engine.alive and engine.state == EngineState.READY


def test_a_cancel_of_a_job_that_has_ended_is_no_error(engine: EngineClient, run: Runner) -> None:
    drain(engine)
    job = run(submit_run(engine, SKIP, ["cancel me late"], baseline=False))
    assert of(run(until_done(engine, job)), "done")[0].status == Status.OK
    run(engine.cancel(job))  # its `done` has been sent: nothing to say
    assert run(answers_ping(engine))
    assert of(drain(engine), "error") == []


# ------------------------------------------------------------------------------------- full disk


def test_a_full_disk_mid_run_is_the_runs_error_and_the_engine_serves_on(engine: EngineClient, run: Runner,
                                                                        tmp_path: Path) -> None:
    """Every write fails with ENOSPC from the first image on (fault engine: an "ENOSPC:" prompt), the
    final status update of run.json included. Before, that update raised out of the engine: exit -6
    (`Fatal Python error: _enter_buffered_busy`)."""
    drain(engine)
    out = tmp_path / "full"
    events = run(until_done(engine, run(submit_run(engine, SKIP, ["ENOSPC: full"], baseline=False, out_dir=out))))
    message = f"writing results to {out} failed: No space left on device"
    assert [e.message for e in of(events, "error")] == [message]
    [done] = of(events, "done")
    assert (done.status, done.message, done.images, done.path) == (Status.ERROR, message, 0, str(out))
    assert of(events, "image") == []  # it failed before the image was delivered
    # What is on disk is the last record that could be written (the client marks it: see the explorer),
    # and no temporary file is left.
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running" and record["images"] == []
    assert "No space left on device" in engine.log_path.read_text()
    # The engine answers, and the next run (the disk has room again) is whole.
    assert run(answers_ping(engine))
    again = tmp_path / "room"
    ok = run(until_done(engine, run(submit_run(engine, SKIP, ["room again"], baseline=False, out_dir=again))))
    assert of(ok, "done")[0].status == Status.OK
    assert json.loads((again / "run.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in again.iterdir()) == ["000.png", "run.json"]


def test_a_failed_write_marks_run_json_error_when_the_disk_has_room_again(engine: EngineClient, run: Runner,
                                                                          tmp_path: Path) -> None:
    drain(engine)
    out = tmp_path / "once"
    events = run(until_done(engine, run(submit_run(engine, SKIP, ["ENOSPC-ONCE: one write fails"], baseline=False,
                                                   out_dir=out))))
    [done] = of(events, "done")
    assert done.status == Status.ERROR and done.message == f"writing results to {out} failed: No space left on device"
    assert json.loads((out / "run.json").read_text())["status"] == "error"
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


# ----------------------------------------------------------------------------------- send() itself


def an_engine(out: io.BytesIO) -> Any:
    from dit_explore.engine.server import Engine

    return Engine(argparse.Namespace(log="/tmp/engine.log"), out)


def sent(out: io.BytesIO) -> list[protocol.EngineEvent]:
    reader = protocol.FrameReader(io.BytesIO(out.getvalue()))
    events = []
    while (frame := reader.read_frame()) is not None:
        events.append(protocol.decode_event(*frame))
    return events


def test_an_event_too_large_for_a_frame_goes_out_as_a_short_error() -> None:
    out = io.BytesIO()
    engine = an_engine(out)
    engine.send(protocol.Error(job=3, message="x" * (protocol.MAX_JSON + 1), log=None))  # FrameTooLarge
    engine.send(protocol.Pong(id=10**5000, state=EngineState.READY, job=None, rss=None))  # no JSON for it
    engine.send_error("y" * 100_000, job=4)  # cut to one readable line
    first, second, third = sent(out)
    assert isinstance(first, protocol.Error) and first.job == 3
    size = len(json.dumps({"type": "error", "job": 3, "message": "x" * (protocol.MAX_JSON + 1), "log": None,
                           "fatal": False}, separators=(",", ":")))
    assert first.message == (f"the error event could not be sent: FrameTooLarge: frame too large: {size} bytes of "
                             f"JSON (max {protocol.MAX_JSON}), 0 bytes of binary (max {protocol.MAX_BINARY})")
    assert isinstance(second, protocol.Error) and second.job is None
    assert second.message.startswith("the pong event could not be sent: ValueError: Exceeds the limit")
    assert isinstance(third, protocol.Error) and third.job == 4
    assert third.message == "y" * 2000 + "… (100000 characters)"


# ------------------------------------------------------------------------------------ NaN latents


def test_nan_latents_are_the_runs_error_in_the_engine(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Event], list[Event]]:
        client = EngineClient("tiny-sd3", device="cpu", log_path=tmp_path / "engine.log")
        await client.start()
        await wait_ready(client)
        try:
            nan = await until_done(client, await submit_run(client, IDENTITY, ["too much"], {"guidance": 1e308,
                                                                                             "steps": 4}))
            ok = await until_done(client, await submit_run(client, IDENTITY, ["fine"], {"steps": 2}))
        finally:
            await client.shutdown()
        return nan, ok

    nan, ok = asyncio.run(scenario())
    message = "the latents became NaN/inf at step 1 of 4 (guidance 1e+308 is too large?)"
    assert [e.message for e in of(nan, "error")] == [message]
    assert of(nan, "done")[0].status == Status.ERROR and of(nan, "done")[0].message == message
    assert of(nan, "image") == []
    assert of(ok, "done")[0].status == Status.OK


def test_nan_latents_make_dit_explore_run_exit_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    result = subprocess.run([sys.executable, "-c", "from dit_explore.tui.cli import entry; entry()", "run", "tiny-sd3",
                             "--device", "cpu",
                             "--guidance", "1e308", "--steps", "3", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["dit-explore run: error: the latents became NaN/inf at step 1 of 3 "
                      "(guidance 1e+308 is too large?)"]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".nan")]


# --------------------------------------------------------------------- an engine that cannot go on


def test_a_stalled_frame_is_reported_and_a_reader_that_cannot_go_on_ends_the_engine(tmp_path: Path) -> None:
    """Without heartbeat pings (which would show the stalled frame cut short at once): a frame whose
    bytes stop coming is an error after FRAME_SECONDS, and the next frame is read. Then stdin failing
    (EIO, injected: the fault engine's READER_FAULT_PING) ends the process, which says why in its log and
    in a fatal error; the client reports it crashed."""

    async def scenario() -> tuple[protocol.Event, bool, list[Event], int | None]:
        client = EngineClient("tiny-flux", device="cpu", log_path=tmp_path / "engine.log", module=FAULT_ENGINE,
                              heartbeat=3600)
        record_pongs(client)
        await client.start()
        await wait_ready(client)
        drain(client)
        await send_raw(client, protocol.HEADER.pack(protocol.MAGIC, 100, 0) + b'{"type": "pi')  # then nothing
        while (stalled := await next_event(client, 60)).TYPE != "error":  # the wait is a hang guard
            pass
        answered = await answers_ping(client)
        await client.ping(READER_FAULT_PING)
        events = []
        while (event := await next_event(client, 60)).TYPE != "crashed":
            events.append(event)
        events.append(event)
        await client.shutdown()
        return stalled, answered, events, client.exit_code

    stalled, answered, events, code = asyncio.run(scenario())
    assert isinstance(stalled, protocol.Error)
    assert stalled.message == "incomplete frame: 24 bytes came within 3 s, then nothing" and answered
    assert code == 1
    [fatal] = [e for e in events if isinstance(e, protocol.Error)]
    assert fatal.fatal and fatal.message == ("reading requests failed: OSError: [Errno 5] Input/output error "
                                             "(injected by a test)")
    crashed = events[-1]
    assert isinstance(crashed, protocol.Crashed) and crashed.exit_code == 1 and "the engine exits with code 1" in crashed.log_tail
    assert "engine exiting with code 1" in (tmp_path / "engine.log").read_text()


def test_an_exception_that_escapes_everything_ends_the_engine_with_code_1(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Event], int | None]:
        client = EngineClient("tiny-flux", device="cpu", log_path=tmp_path / "engine.log", module=FAULT_ENGINE,
                              env={"DIT_EXPLORE_FAULT": "escape-load"})
        await client.start()
        events = []
        while (event := await next_event(client, 60)).TYPE != "crashed":
            events.append(event)
        events.append(event)
        await client.shutdown()
        return events, client.exit_code

    events, code = asyncio.run(scenario())
    assert code == 1 and isinstance(events[-1], protocol.Crashed) and events[-1].exit_code == 1
    fatal = [e for e in events if isinstance(e, protocol.Error)]
    assert [e.message for e in fatal] == ["the engine failed: _Escape: an exception that escapes every handler "
                                          "(injected by a test)"]
    logged = (tmp_path / "engine.log").read_text()
    assert "CRITICAL" in logged and "the engine failed: _Escape" in logged and "engine exiting with code 1" in logged
