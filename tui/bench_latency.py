"""From enter to the plan's image on screen, in the explorer itself (headless, Textual's Pilot).

    python -m dit_explore.tui.bench_latency [MODEL] [--random-weights] [--device cuda] [--runs N] [--json FILE]

Starts the explorer on MODEL with a real engine process, runs the full model once (its image is then the
cached baseline of every later run with that prompt and these settings), then N times edits the plan and
presses enter, and measures each time from the key to the moment the plan's image is drawn in the image
pane (the baseline comes from the cache). Prints the median and writes JSON. The engine's own timing of
each image (text encoding cached, transformer steps, decode) is reported beside it, so the part the
interface and the pipe add is visible.
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
from dit_explore.engine.core.protocol import EngineState, Status


async def measure(model: str, random_weights: bool, device: str, runs: int, width: int | None) -> dict[str, Any]:
    import textual_image.widget  # noqa: F401 - as the CLI does (no terminal here: nothing is probed)

    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.study import skip_plans
    from dit_explore.tui.app import ExplorerApp
    from dit_explore.tui.client import EngineClient
    from dit_explore.tui.session import RunRecord
    from dit_explore.tui.widgets.image_pane import ImagePane

    source = resolve(model)
    # The benchmark's skip plans (`dit-explore bench` times the same ones), in turn: each run's plan differs
    # from the one before, so every enter is a real run.
    named = list(skip_plans(source.layout).items())
    app = ExplorerApp(source, graphics="halfcell", runs_dir=Path("/tmp/dit-explore-latency-runs"),
                      engine_factory=lambda: EngineClient(model, device=device, random_weights=random_weights))
    rows: list[dict[str, Any]] = []

    async def until(pilot: Any, condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the explorer did not get there in time")
            await pilot.pause(0.002)

    async with app.run_test(size=(200, 60)) as pilot:
        session = app.session
        await until(pilot, lambda: session.client is not None and session.client.state == EngineState.READY, 900)
        if width is not None:
            for key in ("width", "height"):
                app.query_one(f"#{key}").value = str(width)  # type: ignore[attr-defined]
        await until(pilot, lambda: not session.busy, 600)  # the analysis on ready
        await pilot.press("enter")  # the full model: its image becomes the cached baseline
        await until(pilot, lambda: any(r.status == Status.OK for r in session.records.values()), 600)
        for i in range(runs):
            name, plan = named[i % len(named)]
            app.set_plan(plan)
            await until(pilot, lambda: not session.busy, 600)
            known = set(session.records)
            pane = app.query_one(ImagePane)
            pressed = time.perf_counter()
            await pilot.press("enter")
            await until(pilot, lambda known=known: bool(set(session.records) - known), 60)
            record = session.records[max(set(session.records) - known)]

            def drawn_now(record: RunRecord = record, pane: ImagePane = pane) -> bool:
                return record.image is not None and pane.shows(record)

            await until(pilot, drawn_now, 600)
            await pilot.pause(0)  # the frame with the image
            drawn = time.perf_counter() - pressed
            await until(pilot, lambda record=record: record.status != Status.RUNNING, 600)
            assert record.timing is not None
            rows.append({"plan": name, "orders": {s: plans.format_order(o) for s, o in plan.orders},
                         "enter_to_image_s": drawn,
                         "engine_total_s": record.timing.total, "text_encode_cached": record.timing.text_encode_cached,
                         "transformer_s": record.timing.transformer_total, "decode_s": record.timing.decode,
                         "baseline_cached": record.baseline is not None, "status": str(record.status),
                         "measured_speedup": record.speed.speedup if record.speed else None,
                         "speed_calls": record.speed.calls if record.speed else None})
        await session.shutdown()
    values = [r["enter_to_image_s"] for r in rows]
    return {"model": model, "random_weights": random_weights, "device": device, "runs": rows,
            "median_enter_to_image_s": statistics.median(values), "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.tui.bench_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="tiny-flux")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, help="width and height (default: the model's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
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
