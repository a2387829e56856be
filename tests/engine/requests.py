"""Typed requests for tests that drive an engine through its client directly (the TUI's session builds
them in production)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from dit_explore.engine.core import protocol
from dit_explore.engine.core.plan import Sampling
from dit_explore.tui.client import EngineClient

_ids = itertools.count(1)  # one counter for every client: ids only ever increase

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def module_loop() -> Iterator[Runner]:
    """For a module-scoped fixture: one event loop for the module, so an engine can outlive a test."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def serving(run: Runner, logs: Path, module: str, model: str = "tiny-flux") -> Iterator[EngineClient]:
    """For a module-scoped fixture: an engine (python -m MODULE) on MODEL, ready, shut down afterwards."""
    client = EngineClient(model, log_path=logs / "engine.log", module=module)
    run(client.start())
    run(wait_ready(client))
    yield client
    run(client.shutdown())


def next_job() -> int:
    return next(_ids)


async def run(client: EngineClient, plan: str, prompts: Sequence[str], sampling: dict[str, Any] | None = None, *,
              out_dir: Path | None = None, **fields: Any) -> int:
    return await client.submit(protocol.Run(job=next_job(), plan=plan, prompts=tuple(prompts),
                                            sampling=Sampling(**(sampling or {})),
                                            out_dir=str(out_dir) if out_dir else None, **fields))


async def analyze(client: EngineClient, prompts: Sequence[str] | None = None, sampling: dict[str, Any] | None = None,
                  **fields: Any) -> int:
    return await client.submit(protocol.Analyze(job=next_job(), prompts=tuple(prompts) if prompts else None,
                                                sampling=Sampling(**(sampling or {})), **fields))


async def send_raw(client: EngineClient, data: bytes) -> None:
    """Bytes as they are (tests of the engine's handling of malformed input)."""
    assert client._proc is not None and client._proc.stdin is not None
    client._proc.stdin.write(data)
    await client._proc.stdin.drain()


def raw_frame(message: dict[str, Any], binary: bytes = b"") -> bytes:
    """A frame of any JSON object, bypassing the typed encoder (malformed requests)."""
    import json

    payload = json.dumps(message).encode()
    return protocol.HEADER.pack(protocol.MAGIC, len(payload), len(binary)) + payload + binary


async def next_event(client: EngineClient, timeout: float | None = None) -> protocol.Event:
    """The next event of the client's stream, waiting at most `timeout` seconds."""
    return await asyncio.wait_for(client._events.get(), timeout)


async def wait_ready(client: EngineClient, timeout: float = 120) -> protocol.Ready:
    """Events until `ready` (the weights are loaded), kept in the stream for the test to read."""
    seen: list[protocol.Event] = []
    try:
        while client.ready is None:
            event = await next_event(client, timeout)
            seen.append(event)
            if isinstance(event, (protocol.Crashed, protocol.Stopped)) or (
                    isinstance(event, protocol.Error) and event.fatal):
                raise AssertionError(f"the engine ended while loading: {event}")
    finally:
        for event in seen:
            client._events.put_nowait(event)
    return client.ready


async def until_done(client: EngineClient, job: int, timeout: float = 120) -> list[protocol.Event]:
    """Every event up to and including JOB's `done`; a crash fails the test."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = await next_event(client, max(0.1, deadline - time.monotonic()))
        events.append(event)
        if isinstance(event, protocol.Done) and event.job == job:
            return events
        if isinstance(event, protocol.Crashed):
            raise AssertionError(f"engine crashed: {event}")


def drain(client: EngineClient) -> list[protocol.Event]:
    """The events already received and not yet read."""
    out = []
    while not client._events.empty():
        out.append(client._events.get_nowait())
    return out


_ping_ids = itertools.count(1_000_000)  # above the heartbeat's ids
_pongs: dict[int, set[int]] = {}  # id(client) -> the ids of the pongs it got


def record_pongs(client: EngineClient) -> None:
    """Keep the id of every pong the client gets (it keeps only the last one), for `answers_ping`."""
    seen = _pongs.setdefault(id(client), set())
    original = client._on_pong

    def on_pong(event: protocol.Pong) -> None:
        seen.add(event.id)
        original(event)

    client._on_pong = on_pong  # type: ignore[method-assign]


async def answers_ping(client: EngineClient, timeout: float = 60) -> bool:
    """Whether the engine answers a ping (this ping: its own id) within `timeout` seconds (a hang guard),
    for a client set up with `record_pongs`."""
    ident = next(_ping_ids)
    await client.ping(ident)
    deadline = time.monotonic() + timeout
    while ident not in _pongs[id(client)]:
        if not client.alive or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True
