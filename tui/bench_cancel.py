"""How fast a cancel lands, measured from the client: the time from sending `cancel` to receiving the
job's `done` (status cancelled), at three points of a run.

    python -m dit_explore.tui.bench_cancel [MODEL] [--random-weights] [--device cuda] [--size PX] [--repeat N]

- submit: right after the run is submitted (before its first block);
- denoise: after the second denoising step's progress (inside the loop);
- decode: after the last step's progress (the VAE decode is running).
Prints each point's median and maximum over N tries and writes JSON (--json).
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

from dit_explore.engine.core import protocol
from dit_explore.engine.core.plan import Sampling
from dit_explore.engine.core.protocol import Status


async def measure(model: str, random_weights: bool, device: str, size: int | None, repeat: int,
                  steps: int) -> dict[str, Any]:
    from dit_explore.tui.client import EngineClient

    client = EngineClient(model, device=device, random_weights=random_weights)
    await client.start(timeout=600)
    while client.ready is None:
        event = await asyncio.wait_for(client._events.get(), 900)
        if isinstance(event, (protocol.Crashed, protocol.Error)):
            raise SystemExit(f"the engine did not load: {event}")
    job = 0
    results: dict[str, list[float]] = {"submit": [], "denoise": [], "decode": []}
    statuses: list[str] = []
    sampling = Sampling(steps=steps, width=size, height=size)
    for point in results:
        for _ in range(repeat):
            job += 1
            await client.submit(protocol.Run(job=job, plan="version = 1\n", prompts=(f"cancel {point} {job}",),
                                             sampling=sampling, baseline=False))
            if point != "submit":
                wanted = 2 if point == "denoise" else steps
                while True:
                    event = await asyncio.wait_for(client._events.get(), 600)
                    if isinstance(event, protocol.Progress) and event.job == job and event.step >= wanted:
                        break
            sent = time.perf_counter()
            await client.cancel(job)
            while True:
                event = await asyncio.wait_for(client._events.get(), 600)
                if isinstance(event, protocol.Done) and event.job == job:
                    results[point].append(time.perf_counter() - sent)
                    statuses.append(str(event.status))
                    break
    await client.shutdown()
    return {"model": model, "device": device, "size": size, "steps": steps, "statuses": statuses,
            "all_cancelled": all(s == Status.CANCELLED for s in statuses),
            "seconds": results, "median_ms": {k: statistics.median(v) * 1000 for k, v in results.items()},
            "max_ms": {k: max(v) * 1000 for k, v in results.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.tui.bench_cancel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="tiny-flux")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = asyncio.run(measure(args.model, args.random_weights, args.device, args.size, args.repeat, args.steps))
    for point in ("submit", "denoise", "decode"):
        print(f"cancel at {point:<8} → done: median {report['median_ms'][point]:7.1f} ms, "
              f"max {report['max_ms'][point]:7.1f} ms")
    print("every run ended cancelled" if report["all_cancelled"] else f"statuses: {report['statuses']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
