"""From enter to the plan's image on screen, in the explorer itself (headless, Textual's Pilot).

    python -m dit_explore.tui.bench_latency [MODEL] [--random-weights] [--device cuda] [--runs N] [--json FILE]
    python -m dit_explore.tui.bench_latency [MODEL] --sessions N [--json FILE]

Starts the explorer on MODEL with a real engine process, runs the full model once (its image is then the
cached baseline of every later run with that prompt and these settings), then N times edits the plan and
presses enter, and measures each time from the key to the moment the plan's image is drawn in the image
pane (the baseline comes from the cache). Prints the median and writes JSON. The engine's own timing of
each image (text encoding cached, transformer steps, decode) is reported beside it, so the part the
interface and the pipe add is visible.

With `--sessions N`, each of N fresh sessions (a new explorer and a new engine process, so nothing is
cached) measures what a user meets first: from start to the engine ready; the first enter after ready
with a skip plan, from the key until the plan's image and its (uncached) baseline are both drawn; then one
plan change (the next skip plan), from the key until its image is drawn, with the baseline now cached.
Medians over the sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import DEFAULT_MODEL
from dit_explore.engine.core.protocol import EngineState, Status


async def _until(pilot: Any, condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the explorer did not get there in time")
        await pilot.pause(0.002)


def _explorer(model: str, random_weights: bool, device: str) -> tuple[Any, list[tuple[str, plans.Plan]]]:
    """A fresh explorer on MODEL with a real engine process, and the benchmark's skip plans (`dit-explore
    bench` times the same ones)."""
    import textual_image.widget  # noqa: F401 - as the CLI does (no terminal here: nothing is probed)

    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.study import skip_plans
    from dit_explore.tui.app import ExplorerApp
    from dit_explore.tui.client import EngineClient

    source = resolve(model)
    app = ExplorerApp(source, graphics="halfcell", runs_dir=Path("/tmp/dit-explore-latency-runs"),
                      engine_factory=lambda: EngineClient(model, device=device, random_weights=random_weights))
    return app, list(skip_plans(source.layout).items())


async def _ready(pilot: Any, app: Any) -> None:
    """Until the engine is ready and the analysis on ready is done (shipped toys: at once)."""
    session = app.session
    await _until(pilot, lambda: session.client is not None and session.client.state == EngineState.READY, 900)
    await _until(pilot, lambda: not session.busy, 600)


async def _enter(pilot: Any, app: Any, name: str, plan: plans.Plan, *, with_baseline: bool) -> dict[str, Any]:
    """Set `plan`, press enter, and time from the key until the plan's image (and, `with_baseline`, its
    baseline too) is drawn in the image pane; the row of the run, once it is done."""
    from dit_explore.tui.session import RunRecord
    from dit_explore.tui.widgets.image_pane import ImagePane

    session = app.session
    app.set_plan(plan)
    await _until(pilot, lambda: not session.busy, 600)
    known = set(session.records)
    pane = app.query_one(ImagePane)
    pressed = time.perf_counter()
    await pilot.press("enter")
    await _until(pilot, lambda: bool(set(session.records) - known), 60)
    record = session.records[max(set(session.records) - known)]

    def drawn_now(record: RunRecord = record) -> bool:
        images = record.image is not None and (record.baseline is not None or not with_baseline)
        return images and pane.shows(record)

    await _until(pilot, drawn_now, 600)
    await pilot.pause(0)  # the frame with the image
    drawn = time.perf_counter() - pressed
    await _until(pilot, lambda: record.status != Status.RUNNING, 600)
    assert record.timing is not None
    return {"plan": name, "orders": {s: plans.format_order(o) for s, o in plan.orders},
            "enter_to_image_s": drawn,
            "engine_total_s": record.timing.total, "text_encode_cached": record.timing.text_encode_cached,
            "transformer_s": record.timing.transformer_total, "decode_s": record.timing.decode,
            "baseline_engine_s": record.baseline_timing.total if record.baseline_timing else None,
            "baseline_cached": record.baseline is not None and not with_baseline, "status": str(record.status),
            "measured_speedup": record.speed.speedup if record.speed else None,
            "speed_calls": record.speed.calls if record.speed else None}


async def measure(model: str, random_weights: bool, device: str, runs: int, width: int | None) -> dict[str, Any]:
    """One session: the full model once (its image becomes the cached baseline), then `runs` plan changes."""
    app, named = _explorer(model, random_weights, device)
    rows: list[dict[str, Any]] = []
    async with app.run_test(size=(200, 60)) as pilot:
        session = app.session
        await _until(pilot, lambda: session.client is not None and session.client.state == EngineState.READY, 900)
        if width is not None:
            for key in ("width", "height"):
                app.query_one(f"#{key}").value = str(width)
        await _until(pilot, lambda: not session.busy, 600)  # the analysis on ready
        await pilot.press("enter")  # the full model: its image becomes the cached baseline
        await _until(pilot, lambda: any(r.status == Status.OK for r in session.records.values()), 600)
        for i in range(runs):
            name, plan = named[i % len(named)]  # each run's plan differs from the one before: a real run
            rows.append(await _enter(pilot, app, name, plan, with_baseline=False))
        await session.shutdown()
    values = [r["enter_to_image_s"] for r in rows]
    return {"model": model, "random_weights": random_weights, "device": device, "runs": rows,
            "median_enter_to_image_s": statistics.median(values), "date": time.strftime("%Y-%m-%d")}


async def fresh_sessions(model: str, random_weights: bool, device: str, sessions: int) -> dict[str, Any]:
    """`sessions` fresh explorers and engines: start to ready, the first enter after ready (plan and
    uncached baseline drawn), then a plan change (baseline cached)."""
    rows: list[dict[str, Any]] = []
    for _ in range(sessions):
        started = time.perf_counter()
        app, named = _explorer(model, random_weights, device)
        async with app.run_test(size=(200, 60)) as pilot:
            await _ready(pilot, app)
            ready = time.perf_counter() - started
            first = await _enter(pilot, app, *named[0], with_baseline=True)
            change = await _enter(pilot, app, *named[1 % len(named)], with_baseline=False)
            await app.session.shutdown()
        rows.append({"start_to_ready_s": ready, "first_enter": first, "plan_change": change})
    return {"model": model, "random_weights": random_weights, "device": device, "sessions": rows,
            "median_start_to_ready_s": statistics.median(r["start_to_ready_s"] for r in rows),
            "median_first_enter_s": statistics.median(r["first_enter"]["enter_to_image_s"] for r in rows),
            "median_plan_change_s": statistics.median(r["plan_change"]["enter_to_image_s"] for r in rows),
            "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.tui.bench_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, help="width and height (default: the model's)")
    parser.add_argument("--sessions", type=int, metavar="N",
                        help="N fresh sessions: start to ready, first enter (uncached baseline), one plan change")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.sessions is not None:
        found = asyncio.run(fresh_sessions(args.model, args.random_weights, args.device, args.sessions))
        for i, row in enumerate(found["sessions"]):
            print(f"session {i + 1}: ready {row['start_to_ready_s']:6.2f} s   first enter (plan + baseline) "
                  f"{row['first_enter']['enter_to_image_s'] * 1000:6.0f} ms   plan change "
                  f"{row['plan_change']['enter_to_image_s'] * 1000:6.0f} ms")
        print(f"median over {len(found['sessions'])} fresh sessions: ready {found['median_start_to_ready_s']:.2f} s, "
              f"first enter {found['median_first_enter_s'] * 1000:.0f} ms, "
              f"plan change {found['median_plan_change_s'] * 1000:.0f} ms")
        if args.json:
            args.json.write_text(json.dumps(found, indent=2) + "\n")
        return 0
    report = asyncio.run(measure(args.model, args.random_weights, args.device, args.runs, args.size))
    for row in report["runs"]:
        print(f"{row['plan']:<28} enter→image {row['enter_to_image_s'] * 1000:7.0f} ms   "
              f"engine {row['engine_total_s'] * 1000:7.0f} ms   speedup measured {row['measured_speedup']}")
    print(f"median enter→image: {report['median_enter_to_image_s'] * 1000:.0f} ms over {len(report['runs'])} runs")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
