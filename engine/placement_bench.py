"""`python -m dit_explore.engine.placement_bench MODEL`: each placement against the full one, under caps on
the process's device memory, on one GPU (BENCHMARKS.md "Fitting smaller GPUs").

One process, one pipeline: the real-size model with random weights, its real-size text encoders too
(built on the GPU, the fast way). First the full placement with no cap: the baseline. Then for each cap
(`--caps 22.5,38.5`, GB the allocator may hold: `torch.cuda.set_per_process_memory_fraction`; a 24 GB
card leaves about 22.5 GB to it) and each setting, the memory plan (engine/core/placement.py, given the cap
plus the CUDA context it counts) either refuses (the line is recorded) or places the pipeline anew (all
weights back in host memory first), and the row is measured:

- peak: torch.cuda.max_memory_reserved (what the allocator took, what the cap limits), and the driver's
  peak (the device's used memory, sampled every 5 ms by a thread, minus what was used before loading);
- s/image: a new prompt (its text encoding included), after one warm-up image;
- s/plan change: the median of three images on that cached prompt, alternating two plans of the same
  cost (the identity and one with two single blocks swapped);
- the image's largest difference from the baseline's (the placements change no number: 0).

    python -m dit_explore.engine.placement_bench flux-schnell --caps 22.5,38.5 --json out.json
    python -m dit_explore.engine.placement_bench sd3-medium --steps 28 --caps 22.5 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np
import torch

from dit_explore.engine.core.memory import COSTS, format_bytes
from dit_explore.engine.core.placement import SETTINGS, PlacementError, plan_placement
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.sampling import Settings, resolve_settings
from dit_explore.engine.executor import set_placer
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded, load
from dit_explore.engine.placement import place

PROMPTS = ("a lighthouse on a rocky coast at dusk", "a red fox in fresh snow", "a bowl of ramen, top view")
GB = 10**9


class DriverPeak:
    """The device's used memory (the driver's view: every process's, the context included), its largest
    value sampled every 5 ms while running."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(0.005)

    def __enter__(self) -> DriverPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())


def _swap_plan(loaded: Loaded) -> Plan:
    """The identity with the last stack's two middle blocks swapped: a plan change of the same cost."""
    stack = loaded.layout.stacks[-1]
    order = list(range(stack.blocks))
    m = stack.blocks // 2
    order[m - 1], order[m] = order[m], order[m - 1]
    return Plan(orders=((stack.name, parse_order(", ".join(map(str, order)))),))


def measure(loaded: Loaded, settings: Settings, baseline: np.ndarray | None, floor: int) -> dict[str, Any]:
    device = loaded.device
    generator = Generator(loaded)
    swapped = _swap_plan(loaded)
    generator.generate(PROMPTS[0], settings, Plan())  # warm-up: kernels, allocator
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with DriverPeak(device) as driver:
        start = time.perf_counter()
        first = generator.generate(PROMPTS[1], settings, Plan())
        torch.cuda.synchronize(device)
        image_s = time.perf_counter() - start
        changes = []
        for i in range(3):
            start = time.perf_counter()
            generator.generate(PROMPTS[1], settings, swapped if i % 2 == 0 else Plan())
            torch.cuda.synchronize(device)
            changes.append(time.perf_counter() - start)
    image = np.asarray(first.image)
    return {"peak_reserved": torch.cuda.max_memory_reserved(device), "peak_allocated": torch.cuda.max_memory_allocated(device),
            "driver_peak": driver.peak - floor, "s_image": image_s, "s_plan_change": statistics.median(changes),
            "s_plan_changes": changes, "encode_s": first.timing.text_encode,
            "max_diff_from_full": None if baseline is None else int(np.abs(image.astype(int) - baseline.astype(int)).max()),
            "image": image}


def unplace(loaded: Loaded) -> None:
    """Every weight back in (pageable) host memory, nothing streaming."""
    if loaded.residency is not None:
        loaded.residency.close()
    set_placer(loaded.transformer, None)
    loaded.pipe.to("cpu")  # type: ignore[attr-defined]
    loaded.residency, loaded.placement = None, None
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_explore.engine.placement_bench")
    p.add_argument("model")
    p.add_argument("--caps", default="22.5,38.5",
                   help="GB the allocator may hold, comma-separated (empty: the full baseline only)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    source = resolve(args.model)
    settings = dataclasses.replace(resolve_settings(source.defaults), width=args.size, height=args.size,
                                   **({"steps": args.steps} if args.steps else {}))
    total = torch.cuda.get_device_properties(device).total_memory
    floor = total - torch.cuda.mem_get_info(device)[0]
    start = time.perf_counter()
    loaded = load(source, device, torch.bfloat16, random_weights=True, random_text_encoders=True)
    build_s = time.perf_counter() - start
    context = COSTS["cuda"].context
    options: dict[str, Any] = dict(guidance=settings.guidance, dtype="bfloat16",
                                   max_sequence_length=settings.max_sequence_length)
    rows: list[dict[str, Any]] = []

    def say(row: dict[str, Any]) -> None:
        shown = {k: v for k, v in row.items() if k not in ("image", "s_plan_changes")}
        print(json.dumps(shown), flush=True)

    full = plan_placement(source, settings.width, settings.height, None, "full", **options)
    base = measure(loaded, settings, None, floor)
    baseline = base.pop("image")
    rows.append({"cap_gb": None, "setting": "full", "placement": full.describe(), "predicted_peak": full.peak - context,
                 **base})
    say(rows[-1])
    for cap in (float(c) for c in args.caps.split(",") if c.strip()):
        for setting in SETTINGS:
            row: dict[str, Any] = {"cap_gb": cap, "setting": setting}
            try:
                placement = plan_placement(source, settings.width, settings.height, int(cap * GB) + context, setting,
                                           where=f"a {cap} GB cap", **options)
            except PlacementError as exc:
                rows.append({**row, "refused": str(exc)})
                say(rows[-1])
                continue
            unplace(loaded)
            residency = place(loaded.pipe, placement, device, [s.attr for s in source.layout.stacks],
                              source.family_info.text_slots)
            if residency is not None:
                set_placer(loaded.transformer, residency)
            loaded.placement, loaded.residency = placement, residency
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(cap * GB / total, device)
            try:
                result = measure(loaded, settings, baseline, floor)
                result.pop("image")
                rows.append({**row, "placement": placement.describe(), "predicted_peak": placement.peak - context,
                             **result})
            except torch.OutOfMemoryError as exc:
                rows.append({**row, "placement": placement.describe(), "oom": str(exc).splitlines()[0]})
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
            say(rows[-1])
    report = {"model": source.name, "device": torch.cuda.get_device_name(device), "size": settings.width,
              "steps": settings.steps, "build_s": build_s, "torch": torch.__version__, "rows": rows}
    for row in rows:
        if "peak_reserved" in row:
            print(f"{row['cap_gb'] or '-':>5} {row['setting']:<10} peak {format_bytes(row['peak_reserved']):>7} "
                  f"(driver {format_bytes(row['driver_peak'])}, predicted {format_bytes(row['predicted_peak'])}) "
                  f"{row['s_image']:.2f} s/image, {row['s_plan_change']:.2f} s/plan change, diff {row['max_diff_from_full']}")
        else:
            print(f"{row['cap_gb']:>5} {row['setting']:<10} {row.get('refused') or row.get('oom')}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
