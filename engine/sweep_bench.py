"""How much faster a sweep is than the loop people write by hand (BENCHMARKS.md, "Sweeps").

    python -m dit_explore.engine.sweep_bench [MODEL] [--prompts 16] [--steps 20] [--repeats 3] [--device cuda]
    python -m dit_explore.engine.sweep_bench --report DIR1 DIR2 ...   (folders of `sweep ... --gpus N`)

In one process, on one loaded model, alternately (plain, sweep, plain, sweep, ...):

- the plain loop: for each prompt, the full model once (the baseline), then every skip-each plan, one
  pipeline call per image with the prompt's text (`pipe(prompt=..., generator=...)`, a PIL image out), each
  plan applied by hand: the stack's `nn.ModuleList` swapped for one without the block, and put back;
- the sweep: the same images through engine/sweep.py (`Sweep`: batches of the prompts of a plan, the
  baselines first and read back for the metrics, every image written and measured: PSNR, SSIM, MS-SSIM,
  MAD, HaarPSI, the toy scorer), into a fresh folder each time, `finish` (results, plot, sheet) included.

Prints and writes (--json) the median seconds of each over the repeats and their ratio; the batch size the
sweep chose; and the sweep's time inside generation (the rest is metrics, files and Python between
batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def plain_loop(loaded: Any, prompts: list[str], settings: Any) -> tuple[float, Any]:
    """The hand-written loop (see the module): seconds, and its first image (the first prompt's baseline)."""
    import torch

    from dit_explore.engine.timing import sync

    pipe, transformer = loaded.pipe, loaded.transformer
    stacks = [(s.attr, getattr(transformer, s.attr)) for s in loaded.layout.stacks]
    start = time.perf_counter()

    # The model's own text length (a toy's is short; the pipelines' default of 512 tokens would make
    # each call several times dearer than the sweep's, and its images different).
    extra = {"max_sequence_length": settings.max_sequence_length} if settings.max_sequence_length else {}
    first: list[Any] = []

    def image(prompt: str, seed: int) -> Any:
        out = pipe(prompt=prompt, num_inference_steps=settings.steps, width=settings.width, height=settings.height,
                   guidance_scale=settings.guidance, generator=torch.Generator("cpu").manual_seed(seed),
                   **extra).images[0]
        first.append(out) if not first else None
        return out

    with torch.inference_mode():
        for prompt in prompts:
            seed = 0
            image(prompt, seed)  # the baseline, once per prompt
            for attr, blocks in stacks:
                for k in range(len(blocks)):
                    setattr(transformer, attr, torch.nn.ModuleList([b for i, b in enumerate(blocks) if i != k]))
                    try:
                        image(prompt, seed)
                    finally:
                        setattr(transformer, attr, blocks)
    sync(loaded.device)
    return time.perf_counter() - start, first[0]


def sweep_once(generator: Any, prompts: list[str], settings: Any, batch: int | None) -> dict[str, Any]:
    from dit_explore.engine.sweep import Sweep, choose_batch, plan_sweep

    loaded = generator.loaded
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "sweep"
        (out / "images").mkdir(parents=True)
        items, meta = plan_sweep("skip-each", generator, loaded.source, settings, 1, None, prompts, [0])
        columns = [(prompt, 0) for prompt in prompts]  # seed 0, as the plain loop
        size = choose_batch(loaded.source, settings, loaded, len(columns), batch)
        start = time.perf_counter()
        job = Sweep(out, loaded.source, generator, items, columns, settings, meta, size)
        job.run_all()
        ran = time.perf_counter() - start
        job.finish()
        total = time.perf_counter() - start
    per_batch = [seconds for _, seconds in job.batch_seconds]
    return {"seconds": total, "run_seconds": ran, "generate_seconds": job.generate_seconds, "batch": size,
            "images": job.ran, "batches": len(per_batch),
            "batch_seconds_median": statistics.median(per_batch) if per_batch else None}


def scaling_report(folders: list[Path]) -> dict[str, Any]:
    """What `--gpus N` sweeps of the same work gave (each folder has ranks.json; one folder of 1 process):
    per folder the processes, images, wall seconds after loading, throughput (images per second) overall
    and steady (each process's first batch, which pays warm-up and compilation, left out: its images and the
    longest of those batches' seconds), the steady scaling efficiency (throughput on N / (N x on 1)), each
    process's idle share (1 - its seconds inside generation / the wall), the loads apart; and, from the
    1-process folder, each plan's time per step against the prediction (the full model's time x the plan's
    block executions / the full model's)."""
    runs = []
    for folder in folders:
        ranks = json.loads((folder / "ranks.json").read_text(encoding="utf-8"))
        wall = float(ranks["sweep_seconds"])
        images = sum(int(r["items"]) for r in ranks["ranks"])
        firsts = [r["batches"][0] for r in ranks["ranks"] if r.get("batches")]
        steady_images = images - sum(int(n) for n, _ in firsts)
        steady_wall = wall - max((float(sec) for _, sec in firsts), default=0.0)
        runs.append({"folder": str(folder), "processes": int(ranks["processes"]), "batch": ranks["batch"],
                     "images": images, "wall_seconds": wall, "throughput": images / wall,
                     "steady_throughput": steady_images / steady_wall if steady_wall > 0 else None,
                     "idle": [1.0 - float(r["generate_seconds"]) / wall for r in ranks["ranks"]],
                     "load_seconds": [float(r["load_seconds"]) for r in ranks["ranks"]]})
    single = next((r for r in runs if r["processes"] == 1), None)
    for run in runs:
        run["efficiency"] = (run["steady_throughput"] / (run["processes"] * single["steady_throughput"])
                             if single and single["steady_throughput"] and run["steady_throughput"] else None)
        run["identical_to_single"] = same_images(Path(single["folder"]), Path(run["folder"])) if single else None
    prediction = []
    if single is not None:
        summary = json.loads((Path(single["folder"]) / "results.json").read_text(encoding="utf-8"))["summary"]
        full = summary[0]
        for plan in summary[1:]:
            if plan.get("ms_per_step") and plan.get("block_executions") and full.get("ms_per_step"):
                predicted = full["ms_per_step"] * plan["block_executions"] / full["block_executions"]
                prediction.append({"plan": plan["plan"], "ms_per_step": plan["ms_per_step"], "predicted": predicted,
                                   "error": plan["ms_per_step"] / predicted - 1.0})
    errors = sorted(abs(p["error"]) for p in prediction)
    return {"runs": runs, "prediction": prediction,
            "prediction_median_abs_error": statistics.median(errors) if errors else None,
            "prediction_max_abs_error": errors[-1] if errors else None}


def same_images(one: Path, other: Path) -> list[int]:
    """[images of `other` byte-identical to `one`'s of the same item key, images of `other` with a key in
    `one`]: whether several processes made the images one process makes. Compared by the rows' SHA-256
    of the PNG, so the images themselves need not be kept (1024-pixel noise is 3 MB an image)."""
    from dit_explore.engine.sweep import read_items_in

    mine, theirs = read_items_in(one), read_items_in(other)
    same = compared = 0
    for key, row in theirs.items():
        if row.get("sha256") and mine.get(key, {}).get("sha256"):
            compared += 1
            same += row["sha256"] == mine[key]["sha256"]
    return [same, compared]


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["| processes | images | batch | wall after loading (s) | images/s | steady images/s | efficiency | "
             "idle (max of processes) | loads (s) | images identical to 1 process |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in sorted(report["runs"], key=lambda r: r["processes"]):
        efficiency = "—" if r["efficiency"] is None else f"{r['efficiency']:.3f}"
        steady = "—" if r["steady_throughput"] is None else f"{r['steady_throughput']:.2f}"
        lines.append(f"| {r['processes']} | {r['images']} | {r['batch']} | {r['wall_seconds']:.1f} | {r['throughput']:.2f} | "
                     f"{steady} | {efficiency} | {max(r['idle']):.1%} | "
                     f"{', '.join(format(x, '.1f') for x in r['load_seconds'])} | "
                     f"{'—' if not r['identical_to_single'] else '{} of {}'.format(*r['identical_to_single'])} |")
    if report["prediction"]:
        lines += ["", f"Per-plan time per step against the prediction ({len(report['prediction'])} plans, 1 process): "
                  f"median |error| {report['prediction_median_abs_error']:.1%}, "
                  f"largest {report['prediction_max_abs_error']:.1%}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.engine.sweep_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="toy-flux")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="compile the blocks (regional torch.compile) for "
                        "both the plain loop and the sweep; compilation happens in the warm-up, outside the timings")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--report", type=Path, nargs="+", metavar="DIR", help="instead of a benchmark: the scaling "
                        "report of `dit-explore sweep ... --gpus N` folders of the same work (one of them --gpus 1)")
    args = parser.parse_args(argv)
    if args.report:
        report = scaling_report(args.report)
        print(report_markdown(report), end="")
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return 0

    import torch

    from dit_explore.engine.core.catalog import default_prompt
    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.core.shapes import CAPTIONS
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import load, pick_device, pick_dtype

    source = resolve(args.model)
    device = pick_device(args.device)
    loaded = load(source, device, pick_dtype(None, device), compile=args.compile)
    generator = Generator(loaded)
    step = max(1, len(CAPTIONS) // args.prompts)
    prompts = (list(CAPTIONS[::step][:args.prompts]) if args.model.startswith("toy-")
               else [f"{default_prompt(source.name)} ({i})" for i in range(args.prompts)])
    settings = resolve_settings(source.defaults)
    settings = type(settings)(**{**settings.__dict__, "steps": args.steps})
    import numpy as np

    from dit_explore.engine.core.plan import Plan

    _, plain_first = plain_loop(loaded, prompts[:1], settings)  # warm-up: allocations, kernel selection
    ours = generator.generate(prompts[0], type(settings)(**{**settings.__dict__, "seed": 0}), Plan()).image
    difference = int(np.abs(np.asarray(plain_first, dtype=np.int16) - np.asarray(ours, dtype=np.int16)).max())
    print(f"the plain loop's first image against run's: largest difference {difference} levels", flush=True)
    warm = sweep_once(generator, prompts, settings, args.batch)  # every batch size the timed sweeps form
    size = warm["batch"]
    alone = []  # one batch of the full model by itself: what a batch costs with nothing beside it
    for _ in range(3):
        started = time.perf_counter()
        generator.generate_batch(prompts[:size], [0] * size, settings, Plan())
        alone.append(time.perf_counter() - started)
    print(f"warm-up sweep {warm['seconds']:.2f} s; one batch of {size} alone: {statistics.median(alone):.3f} s", flush=True)
    plains: list[float] = []
    sweeps: list[dict[str, Any]] = []
    images = len(prompts) * (1 + sum(s.blocks for s in source.layout.stacks))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    def record() -> dict[str, Any]:
        plain, swept = statistics.median(plains), statistics.median(s["seconds"] for s in sweeps)
        return {"model": source.name, "device": device_name, "prompts": len(prompts), "steps": args.steps,
                "images": images, "repeats": len(plains), "first_image_difference": difference,
                "compiled": args.compile, "warm_up_sweep_seconds": warm["seconds"],
                "batch_alone_seconds": statistics.median(alone),
                "plain_seconds": plains, "sweep": sweeps, "plain_median": plain, "sweep_median": swept,
                "speedup": plain / swept}

    for r in range(args.repeats):
        plains.append(plain_loop(loaded, prompts, settings)[0])
        sweeps.append(sweep_once(generator, prompts, settings, args.batch))
        print(f"repeat {r + 1}: plain loop {plains[-1]:.2f} s, sweep {sweeps[-1]['seconds']:.2f} s "
              f"(generation {sweeps[-1]['generate_seconds']:.2f} s, {sweeps[-1]['batches']} batches of "
              f"{sweeps[-1]['batch']}, median {sweeps[-1]['batch_seconds_median']:.3f} s each)", flush=True)
        if args.json is not None:  # after every repeat: a run cut short keeps the repeats it finished
            args.json.write_text(json.dumps(record(), indent=1) + "\n", encoding="utf-8")
    done = record()
    print(f"{source.name} skip-each x {len(prompts)} prompts x {args.steps} steps ({images} images) on {device_name}"
          f"{', compiled blocks' if args.compile else ''}: "
          f"plain loop {done['plain_median']:.2f} s, sweep {done['sweep_median']:.2f} s (medians of {args.repeats}): "
          f"{done['speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
