"""Raw frames against a live engine (tiny-flux): whatever bytes arrive — random bytes, frames of random
JSON, random request-shaped objects, frames cut short, headers over the limits, and every input the
hardening issue named — the engine answers a ping after each case, stays up, and logs no traceback.

Cheap on purpose (500 generated cases in well under a minute on two cores): requests that would run are
kept small (64 px, at most 4 steps, no run directory), so a valid `run` or `analyze` costs little and
is superseded by the next one. `shutdown` is never sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dit_explore.engine.core import protocol
from dit_explore.tui.client import EngineClient
from tests.engine.requests import Runner, answers_ping, drain, module_loop, record_pongs, send_raw, wait_ready

GENERATED_CASES = 500
PLANS = ["version = 1\n", 'version = 1\n[order]\nsingle = "0-2, 7"\n', 'version = 1\n[order]\ndouble = "3-0"\n',
         "", "version = 3\n", 'version = 1\n[order]\nsingle = "0-[1"\n', "[[[", "version = 1\nactive_steps = \"0\"\n"]


def frame(payload: bytes, binary: bytes = b"") -> bytes:
    return protocol.HEADER.pack(protocol.MAGIC, len(payload), len(binary)) + payload + binary


def frame_of(message: Any) -> bytes:
    return frame(json.dumps(message).encode())


# ------------------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

small_ints = st.integers(-3, 5)
sizes = st.sampled_from([64, 128, 60, 0, -64, 8])
sampling = st.fixed_dictionaries({}, optional={
    "seed": st.integers(-1, 2**40) | json_values, "steps": small_ints | json_values, "width": sizes | json_values,
    "height": sizes | json_values, "guidance": st.floats(0, 10) | json_values, "prompt": st.none() | st.text(max_size=5),
    "bogus": json_values})
prompts = st.lists(st.text(max_size=12), max_size=3) | json_values


def request_shaped() -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like requests (run, analyze, cancel, ping: never shutdown), each field right or
    wrong, sometimes an unknown field; `out_dir` never (a run directory would go to a random path)."""
    job = st.integers(0, 2**62) | json_values
    run = st.fixed_dictionaries({"type": st.just("run"), "job": job, "plan": st.sampled_from(PLANS) | json_values,
                                 "prompts": prompts},
                                optional={"sampling": sampling | json_values, "baseline": st.booleans() | json_values,
                                          "previews": st.booleans(), "plan_source": st.none() | st.text(max_size=8),
                                          "extra": json_values})
    analyze = st.fixed_dictionaries({"type": st.just("analyze"), "job": job},
                                    optional={"prompts": st.none() | prompts, "sampling": sampling,
                                              "groups": st.none() | small_ints | json_values,
                                              "use_cache": st.booleans() | json_values})
    cancel = st.fixed_dictionaries({"type": st.just("cancel")}, optional={"job": st.none() | job})
    ping = st.fixed_dictionaries({"type": st.just("ping")}, optional={"id": st.integers() | json_values,
                                                                     "extra": json_values})
    return run | analyze | cancel | ping


def one_piece() -> st.SearchStrategy[bytes]:
    header = st.builds(lambda j, b: protocol.HEADER.pack(protocol.MAGIC, j, b),
                       st.integers(0, 2**32 - 1) | st.integers(0, 200), st.just(0) | st.integers(0, 2**32 - 1))
    requests = request_shaped().map(frame_of)
    cut = st.tuples(requests, st.integers(1, 200)).map(lambda fc: fc[0][: max(1, len(fc[0]) - fc[1])])
    return st.one_of(
        st.binary(max_size=120),  # random bytes
        json_values.map(lambda v: frame(json.dumps(v).encode())),  # a valid header, random JSON
        st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(
            lambda d: frame_of({"type": "ping", **d})),
        requests,  # request-shaped
        requests,
        cut,  # cut short
        header,  # headers, many over the limits
        st.tuples(header, st.binary(max_size=40)).map(b"".join),
        st.binary(max_size=60).map(lambda b: protocol.MAGIC + b),
    )


cases = st.lists(one_piece(), min_size=1, max_size=3).map(b"".join)


# ----------------------------------------------------------------------- the inputs the issue named

NAMED = {
    "deeply nested JSON": frame(b'{"type": "ping", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "a plan with a 5000-digit index": frame_of(
        {"type": "run", "job": 7, "plan": 'version = 1\n[order]\nsingle = "' + "9" * 5000 + '"\n', "prompts": ["p"]}),
    "a nested TOML plan": frame_of({"type": "run", "job": 8, "plan": "version = 1\nx = " + "[" * 5000 + "]" * 5000,
                                    "prompts": ["p"]}),
    "a ping with a 5000-digit id": frame(b'{"type": "ping", "id": ' + b"9" * 5000 + b"}"),
    "a ping with a 4300-digit id (the largest JSON allows)": frame(b'{"type": "ping", "id": ' + b"9" * 4300 + b"}"),
    "an unknown request type of 4 MiB": frame_of({"type": "x" * (protocol.MAX_JSON - 100)}),
    "an unknown field whose echo would not fit in a frame": frame_of(
        {"type": "ping", "id": 1, "\\" * ((protocol.MAX_JSON - 100) // 2): 1}),
    "a header declaring 2 GiB": protocol.HEADER.pack(protocol.MAGIC, 1 << 31, 0),
    "a header declaring 4 GiB of binary": protocol.HEADER.pack(protocol.MAGIC, 2, 2**32 - 1) + b"{}",
    "a frame cut short": protocol.HEADER.pack(protocol.MAGIC, 100, 0) + b'{"type": "ping", "i',
    "a header cut short": protocol.MAGIC + b"\x00\x00",
    "a cancel of a job the engine never had": frame_of({"type": "cancel", "job": 10**12}),
    "a cancel with nothing to cancel": frame_of({"type": "cancel", "job": None}),
    "garbage": b"\x00\xffnot a frame at all",
}


# --------------------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def run() -> Iterator[Runner]:
    yield from module_loop()


@pytest.fixture(scope="module")
def engine(run: Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    # No heartbeat: the pings are the test's, one after each case.
    client = EngineClient("tiny-flux", device="cpu", log_path=tmp_path_factory.mktemp("logs") / "engine.log",
                          heartbeat=3600, unresponsive_after=3600)
    record_pongs(client)
    run(client.start())
    run(wait_ready(client))
    yield client
    run(client.shutdown())


def with_named_examples(test: Any) -> Any:
    for data in NAMED.values():
        test = example(data=data)(test)
    return test


def test_raw_frames_never_stop_the_engine_from_answering(engine: EngineClient, run: Runner) -> None:
    log = Path(engine.log_path)
    count = [0]
    started = time.monotonic()

    @settings(max_examples=GENERATED_CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @with_named_examples
    @given(data=cases)
    def case(data: bytes) -> None:
        assume(b"shutdown" not in data and b"out_dir" not in data)
        count[0] += 1
        run(send_raw(engine, data))
        assert run(answers_ping(engine, timeout=60)), f"no pong after {data[:200]!r}"
        drain(engine)
        assert engine.alive

    case()
    seconds = time.monotonic() - started
    assert count[0] >= GENERATED_CASES + len(NAMED) - 10  # every case ran (a few may be filtered out)
    logged = log.read_text(errors="replace")
    assert "Traceback" not in logged and "Fatal Python error" not in logged
    print(f"{count[0]} cases in {seconds:.1f} s")  # shown with -s: the budget is 60 s on two cores
