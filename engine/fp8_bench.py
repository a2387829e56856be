"""`python -m dit_explore.engine.fp8_bench [MODEL]`: FP8 blocks (`--quantize fp8`) against bfloat16, eager
and compiled, side by side in one process on one GPU (BENCHMARKS.md "FP8").

For each of bf16 and fp8, eager then compiled: the model is loaded (`--random-weights` for real-size
aliases: no text encoders, deterministic pseudo-embeddings), two warm-up images (the compiled run's first
call compiles), then `--runs` images; the per-step transformer time is the median over every step of
those images (CUDA events, engine/timing.py). Images of both precisions under the same mode are compared
(PSNR, SSIM: engine/metrics.py) on `--prompts` prompts.

    python -m dit_explore.engine.fp8_bench flux-schnell --json out.json
    python -m dit_explore.engine.fp8_bench toy-flux --prompts 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from dit_explore.engine.core.plan import Plan
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.engine.core.shapes import CAPTIONS
from dit_explore.engine.generate import Generator
from dit_explore.engine.metrics import compare
from dit_explore.engine.models import load

REAL_PROMPTS = ("a lighthouse on a rocky coast at dusk", "a red fox in fresh snow", "a bowl of ramen, top view")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_explore.engine.fp8_bench")
    p.add_argument("model", nargs="?", default="flux-schnell")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--modes", default="eager,compiled", help="eager, compiled or both (comma-separated)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    modes = [m == "compiled" for m in args.modes.split(",")]
    device = torch.device("cuda", torch.cuda.current_device())
    source = resolve(args.model)
    settings = resolve_settings(source.defaults)
    random = source.kind not in ("tiny", "toy")
    prompts = (list(REAL_PROMPTS) if random else list(CAPTIONS[:: max(1, len(CAPTIONS) // args.prompts)]))[:args.prompts]
    rows: list[dict[str, Any]] = []
    images: dict[tuple[str, bool], list[Any]] = {}
    for compiled in modes:
        for quantize in (None, "fp8"):
            loaded = load(source, device, torch.bfloat16, random_weights=random, compile=compiled, quantize=quantize)
            generator = Generator(loaded)
            start = time.perf_counter()
            generator.generate(prompts[0], settings, Plan())
            first_s = time.perf_counter() - start
            generator.generate(prompts[0], settings, Plan())
            steps: list[float] = []
            for _ in range(args.runs):
                steps += generator.generate(prompts[0], settings, Plan()).timing.transformer_steps
            images[quantize or "bf16", compiled] = [generator.generate(t, settings, Plan()).image for t in prompts]
            row = {"precision": quantize or "bf16", "compiled": compiled, "step_ms": 1000 * statistics.median(steps),
                   "steps_measured": len(steps), "first_image_s": first_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del generator, loaded
            torch.cuda.empty_cache()
    comparisons: list[dict[str, Any]] = []
    for compiled in modes:
        for i, prompt in enumerate(prompts):
            c = compare(images["fp8", compiled][i], images["bf16", compiled][i])
            comparisons.append({"compiled": compiled, "prompt": prompt, "psnr": c.psnr, "ssim": c.ssim})
    step = {(r["precision"], r["compiled"]): r["step_ms"] for r in rows}
    summary = {**{f"{'compiled' if c else 'eager'}_speedup": step["bf16", c] / step["fp8", c] for c in modes},
               "psnr_median": statistics.median(float(c["psnr"]) for c in comparisons if c["psnr"] is not None),
               "ssim_median": statistics.median(float(c["ssim"]) for c in comparisons)}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": source.name, "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                       "size": settings.width, "steps": settings.steps, "rows": rows, "comparisons": comparisons,
                       "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
