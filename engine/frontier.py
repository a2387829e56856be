"""The speed/quality frontier of plans over time on a toy model (BENCHMARKS.md, "Plans over time").

    python -m dit_explore.engine.frontier [MODEL] [--captions 24] [--device cpu] [--json FILE]

For each strategy, every caption of a fixed spread over the shapes grammar (caption i with seed i, the
model's default settings) is drawn through the one generation path and compared with the full model's
image of the same caption and seed: SSIM (torchmetrics, engine/metrics.py), the toy scorer's
all-correct, and the cost. Strategies, all on the middle group of the single stack (4-11 of toy-flux's
12 single blocks; the double stack untouched):

- static: skip 4-11 on every step; skip 6-9;
- per-step: skip 4-11 on the second half of the steps (a [[steps]] table);
- reuse / forecast: `4-11@reuse` / `4-11@forecast` with the full model every 2nd or 3rd step (FORA-style);
- dynamic: diffusers' FirstBlockCache at thresholds 0.1, 0.2, 0.3 (engine/cache_trace.py; its cost is
  what the trace says ran).

Cost is the block executions over the full model's (what the plan runs; exact) and the measured
transformer seconds per image over the full model's, medians over the captions, measured in this process
one image after the other (plan and full model alternate per caption, so drift affects both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

STRATEGIES: tuple[tuple[str, str, str], ...] = (
    # (name, kind, plan text or threshold)
    ("skip 4-11, every step", "static", 'version = 1\n[order]\nsingle = "0-3"\n'),
    ("skip 6-9, every step", "static", 'version = 1\n[order]\nsingle = "0-5, 10-11"\n'),
    ("skip 4-11, second half of the steps", "per-step", "half"),
    ("4-11@reuse, full every 2nd step", "reuse", "2"),
    ("4-11@reuse, full every 3rd step", "reuse", "3"),
    ("4-11@forecast, full every 2nd step", "forecast", "2"),
    ("4-11@forecast, full every 3rd step", "forecast", "3"),
    ("FirstBlockCache 0.1", "dynamic", "0.1"),
    ("FirstBlockCache 0.2", "dynamic", "0.2"),
    ("FirstBlockCache 0.3", "dynamic", "0.3"),
)


def strategy_plan(kind: str, value: str, steps: int) -> Any:
    from dit_explore.engine.core import plan as plans

    if kind == "static":
        return plans.loads(value)
    if kind == "per-step":
        half = ",".join(str(s) for s in range(steps // 2, steps))
        return plans.loads(f'version = 2\n[[steps]]\nsteps = "{half}"\n[steps.order]\nsingle = "0-3"\n')
    every = ",".join(str(s) for s in range(0, steps, int(value)))
    return plans.loads(f'version = 2\n[order]\nsingle = "0-3, 4-11@{kind}"\n[[steps]]\nsteps = "{every}"\n'
                       "[steps.order]\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.engine.frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="toy-flux")
    parser.add_argument("--captions", type=int, default=24)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from dit_explore.engine.cache_trace import first_block_cache, trace_plan
    from dit_explore.engine.core import plan as plans
    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.sampling import block_runs, resolve_settings
    from dit_explore.engine.core.shapes import ATTRIBUTES, CAPTIONS, read_back
    from dit_explore.engine.eval import for_scoring
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.metrics import compare
    from dit_explore.engine.models import load, pick_device, pick_dtype

    source = resolve(args.model)
    device = pick_device(args.device)
    loaded = load(source, device, pick_dtype(None, device))
    generator = Generator(loaded)
    base = resolve_settings(source.defaults)
    stride = max(1, len(CAPTIONS) // args.captions)
    chosen = list(range(0, len(CAPTIONS), stride))[:args.captions]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    def draw(index: int, plan: Any, threshold: float | None = None) -> tuple[Any, float, float]:
        settings = replace(base, seed=index)
        if threshold is None:
            result = generator.generate(CAPTIONS[index], settings, plan)
            return result.image, result.timing.transformer_total, result.block_runs.total
        with first_block_cache(loaded.transformer, loaded.layout, threshold) as trace:
            result = generator.generate(CAPTIONS[index], settings, plans.Plan(), on_step=trace.on_step)
        ran = block_runs(trace_plan(loaded.layout, trace.computed, settings.steps, name="t", note=""),
                         loaded.layout, settings.steps).total
        return result.image, result.timing.transformer_total, ran

    full_total = block_runs(plans.Plan(), loaded.layout, base.steps).full_total
    draw(chosen[0], plans.Plan())  # warm-up
    rows: list[dict[str, Any]] = []
    for name, kind, value in (("full model", "full", ""), *STRATEGIES):
        plan = plans.Plan() if kind in ("full", "dynamic") else strategy_plan(kind, value, base.steps)
        if kind not in ("full", "dynamic"):
            plans.validate(plan, loaded.layout)
            plans.validate_steps(plan, base.steps)
        ssim, correct, ratios, cost = [], [], [], []
        started = time.perf_counter()
        for index in chosen:
            full_image, full_seconds, _ = draw(index, plans.Plan())
            image, seconds, ran = draw(index, plan, float(value) if kind == "dynamic" else None)
            ssim.append(compare(image, full_image).ssim)
            correct.append(all(read_back(for_scoring(image)).matches(ATTRIBUTES[index]).values()))
            ratios.append(full_seconds / seconds)
            cost.append(ran / full_total)
        rows.append({"strategy": name, "kind": kind, "captions": len(chosen), "ssim": statistics.fmean(ssim),
                     "all_correct": statistics.fmean(correct), "executions": statistics.fmean(cost),
                     "measured_speedup": statistics.median(ratios), "predicted_speedup": 1 / statistics.fmean(cost),
                     "seconds": time.perf_counter() - started})
        r = rows[-1]
        print(f"{name:40s} SSIM {r['ssim']:.3f}  all-correct {r['all_correct']:.1%}  executions {r['executions']:.3f}  "
              f"predicted {r['predicted_speedup']:.2f}x  measured {r['measured_speedup']:.2f}x", flush=True)
    record = {"model": source.name, "device": device_name, "steps": base.steps, "captions": [CAPTIONS[i] for i in chosen],
              "rows": rows}
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(markdown(record))
    return 0


def markdown(record: dict[str, Any]) -> str:
    lines = ["| strategy | SSIM vs full | all-correct | block executions | predicted | measured |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        lines.append(f"| {r['strategy']} | {r['ssim']:.3f} | {r['all_correct']:.1%} | {r['executions']:.3f} | "
                     f"{r['predicted_speedup']:.2f}× | {r['measured_speedup']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
