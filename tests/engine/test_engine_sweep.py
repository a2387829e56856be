"""The explorer's sweeps through the real engine process on tiny-flux (double 4, single 8): a `sweep`
request streams one `progress` of role `sweep` per item and ends with `done` naming the folder, whose
results.json holds the full model and one row per block; a cancel mid-sweep ends it as cancelled and the
engine serves the next run; a bad request is refused with `error` and `done`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dit_explore.engine.core import protocol
from dit_explore.engine.core.importance import read_importance
from dit_explore.engine.core.plan import Sampling
from dit_explore.engine.core.protocol import Role, Status
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui.client import EngineClient
from tests.engine.requests import Runner, drain, module_loop, next_event, next_job, serving, until_done
from tests.engine.requests import run as submit_run

BLOCKS = 4 + 8  # tiny-flux


@pytest.fixture(scope="module")
def run() -> Iterator[Runner]:
    yield from module_loop()


@pytest.fixture(scope="module")
def engine(run: Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    yield from serving(run, tmp_path_factory.mktemp("logs"), "dit_explore.engine")


async def sweep(client: EngineClient, out: Path, kind: str = "skip-each", **sampling: Any) -> int:
    return await client.submit(protocol.Sweep(job=next_job(), kind=kind, prompt="a red cube",
                                              sampling=Sampling(**sampling), out_dir=str(out)))


def of(events: list[protocol.Event], kind: str, job: int) -> list[Any]:
    return [e for e in events if kind == e.TYPE and getattr(e, "job", None) == job]


def test_a_sweep_streams_its_items_and_ends_with_its_folder(engine: EngineClient, run: Runner, tmp_path: Path) -> None:
    drain(engine)
    out = tmp_path / "sweep"
    out.mkdir()  # the explorer claims the folder before it asks (empty is accepted)
    job = run(sweep(engine, out, steps=2, seed=3))
    events = run(until_done(engine, job))
    progress = of(events, "progress", job)
    assert all(e.role == Role.SWEEP and e.steps == 1 + BLOCKS for e in progress)
    assert [e.step for e in progress] == list(range(1, 2 + BLOCKS))  # the full model, then each block
    assert progress[0].label == "full model" and progress[1].label == "double: skip 0"
    assert progress[-1].label == "single: skip 7"
    (done,) = of(events, "done", job)
    assert done.status == Status.OK and done.path == str(out) and done.images == 1 + BLOCKS
    assert done.blocks_restored is True and of(events, "image", job) == []
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "skip-each" and results["model"] == "tiny-flux"
    assert len(results["rows"]) == 1 + BLOCKS and results["rows"][0]["seed"] == 3
    assert (out / "plot.png").is_file() and (out / "contact_sheet.png").is_file()
    importance = read_importance(out, "tiny-flux", resolve("tiny-flux").layout)
    assert [len(blocks) for blocks in importance.stacks.values()] == [4, 8]


def test_a_cancel_mid_sweep_ends_it_and_the_engine_serves_on(engine: EngineClient, run: Runner,
                                                             tmp_path: Path) -> None:
    drain(engine)
    out = tmp_path / "cancelled"

    async def scenario() -> tuple[int, list[protocol.Event]]:
        job = await sweep(engine, out, steps=8, width=256, height=256)
        seen: list[protocol.Event] = []
        while not of(seen, "progress", job):  # the first item is done: the sweep is under way
            seen.append(await next_event(engine, 120))
        await engine.cancel(job)
        return job, seen + await until_done(engine, job)

    job, events = run(scenario())
    (done,) = of(events, "done", job)
    assert done.status == Status.CANCELLED and done.blocks_restored is True
    assert 1 <= done.images < 1 + BLOCKS and done.path == str(out)
    assert not (out / "results.json").exists()
    assert len((out / "items.jsonl").read_text().splitlines()) == done.images  # the finished items stay
    after = run(submit_run(engine, "version = 1\n", ["after the sweep"], baseline=False))
    (ok,) = of(run(until_done(engine, after)), "done", after)
    assert ok.status == Status.OK


@pytest.mark.parametrize(("kind", "folder", "problem"), [
    ("skip-all", "new", "sweep.kind: 'skip-all' is not one of skip-each, skip-middle-n"),
    ("skip-each", "full", "must be a new or empty folder"),
])
def test_a_bad_sweep_is_refused(engine: EngineClient, run: Runner, tmp_path: Path, kind: str, folder: str,
                                problem: str) -> None:
    drain(engine)
    out = tmp_path / folder
    if folder == "full":
        out.mkdir()
        (out / "someone.txt").write_text("mine")
    job = run(sweep(engine, out, kind))
    events = run(until_done(engine, job))
    (error,) = of(events, "error", job)
    (done,) = of(events, "done", job)
    assert problem in error.message and done.status == Status.ERROR
    assert (out / "someone.txt").read_text() == "mine" if folder == "full" else not out.exists()
