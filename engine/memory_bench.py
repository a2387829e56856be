"""`python -m dit_explore.engine.memory_bench`: the memory estimator (engine/core/memory.py) against measured
peaks, as a table and a JSON file.

Every measurement runs in a fresh process, as the engine's first request does: it loads the model, then
generates one image, the denoising and the decode measured apart. On CPU the peak is the growth of the
resident set (VmHWM, reset through /proc/self/clear_refs at each phase start): what the kernel sees and
what the out-of-memory killer acts on. On CUDA it is the growth of torch.cuda.max_memory_reserved (what
the caching allocator took from the device), and the growth of max_memory_allocated (the tensors alone)
stands in for the exact column below; the memory outside the allocator (the CUDA context) is printed.

On CPU each size is measured twice over. `rss`: as the engine runs, the largest of --repeat processes:
glibc keeps freed chunks below its (dynamic, at most 32 MiB) mmap threshold in its heaps, so identical
runs differ by up to a third. `tensors`: one process with MALLOC_MMAP_THRESHOLD_=65536, where every
block of 64 KiB or more is mapped and unmapped as it is allocated and freed, so the resident set follows
the live tensors (and the runtime's own memory) exactly, run after run. The estimate's tensor terms are
compared with the second, its total (with the allocator allowance) with the first.

    python -m dit_explore.engine.memory_bench                      # tiny models, 64-512 px, this device
    python -m dit_explore.engine.memory_bench --models flux-schnell,sd3-medium,auraflow --random-weights \
        --sizes 512,1024,2048 --repeat 1 --json gpu.json           # real sizes, on a GPU
    python -m dit_explore.engine.memory_bench --blocks             # per-block activations (MemorySpec)

`--blocks` measures what each family's MemorySpec declares: one block of each stack at the real width
(a real-size transformer cut to one block per stack, random weights; exact allocation on CPU, allocated
bytes on CUDA), at two sizes, fitted per image token and per text token; and whether the attention
kernel materialises the N x N matrix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.memory import MemoryEstimate, estimate, format_bytes, text_tokens
from dit_explore.engine.core.resolve import ModelError, ModelSource, resolve
from dit_explore.engine.core.sampling import resolve_settings

DEFAULT_MODELS = ("tiny-flux", "tiny-sd3", "tiny-auraflow")
DEFAULT_SIZES = (64, 128, 256, 512)
BLOCK_MODELS = ("flux-schnell", "sd3-medium", "auraflow")
PROMPT = "a lighthouse on a rocky coast at dusk"


# ------------------------------------------------------------------------------------ in the child


class Meter:
    """Peak memory growth of a phase: resident set on CPU; on CUDA what the caching allocator reserved
    (`tensors`: what it allocated, the tensors alone)."""

    def __init__(self, device: Any, tensors: bool = False) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self.tensors = tensors
        self.start = 0

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/self/status")

    def begin(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.torch.cuda.memory_reserved(self.device)
            self.start_allocated = self.torch.cuda.memory_allocated(self.device)
        else:
            self.start = self._status("VmRSS:")
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # VmHWM := VmRSS

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            if self.tensors:
                return self.torch.cuda.max_memory_allocated(self.device) - self.start_allocated
            return self.torch.cuda.max_memory_reserved(self.device) - self.start
        return self._status("VmHWM:") - self.start

    def peak_allocated(self) -> int | None:
        if not self.cuda:
            return None
        return self.torch.cuda.max_memory_allocated(self.device) - self.start_allocated


def _load(model: str, device: str, dtype: str | None, random_weights: bool, source: ModelSource | None = None) -> Any:
    from dit_explore.engine.models import load, pick_device, pick_dtype

    torch_device = pick_device(device)
    return load(source or resolve(model), torch_device, pick_dtype(dtype, torch_device), random_weights=random_weights)


def measure_generation(model: str, width: int, height: int, device: str, dtype: str | None,
                       random_weights: bool) -> dict[str, Any]:
    """One image in this process: the peaks of the whole generation, of the denoising (with the text
    encoding) and of the decode alone (from its own start)."""
    from dit_explore.engine.core.runs import png_bytes
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import parameter_bytes

    loaded = _load(model, device, dtype, random_weights)
    source = loaded.source
    generator = Generator(loaded)
    settings = resolve_settings(source.defaults, plans.Sampling(width=width, height=height))
    meter = Meter(loaded.device)
    meter.begin()
    base, base_allocated = meter.start, getattr(meter, "start_allocated", 0)
    started = time.perf_counter()
    result = generator.generate(PROMPT, settings, plans.Plan(), decode=False)
    denoise = meter.peak()
    denoise_allocated = meter.peak_allocated()
    meter.begin()
    before_decode, before_decode_allocated = meter.start, getattr(meter, "start_allocated", 0)
    decode_started = time.perf_counter()
    image = generator.decode(result.latents, settings)
    png_bytes(image, plans.Plan())
    decode = meter.peak()
    decode_allocated = meter.peak_allocated()
    out = {
        "model": model, "width": width, "height": height, "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."), "random_weights": loaded.random_weights,
        "weights_bytes": parameter_bytes(loaded.pipe), "peak": max(denoise, before_decode - base + decode),
        "denoise": denoise, "decode": decode, "denoise_seconds": decode_started - started,
        "decode_seconds": time.perf_counter() - decode_started,
    }
    if meter.cuda:
        import torch

        free, total = torch.cuda.mem_get_info(loaded.device)
        assert denoise_allocated is not None and decode_allocated is not None
        out.update(denoise_allocated=denoise_allocated, decode_allocated=decode_allocated,
                   peak_allocated=max(denoise_allocated, before_decode_allocated - base_allocated + decode_allocated),
                   outside_allocator=total - free - torch.cuda.memory_reserved(loaded.device),
                   gpu=torch.cuda.get_device_name(loaded.device))
    return out


def measure_blocks(model: str, device: str, dtype: str | None, sides: tuple[int, int]) -> dict[str, Any]:
    """One block per stack of a real-width transformer (random weights), the peak growth of each block at
    two image sizes, fitted as a per-image-token and a per-text-token coefficient in (tokens x width)
    units of the dtype."""
    import torch

    from dit_explore.engine.generate import Generator

    source = resolve(model)
    family = source.family_info
    config = dict(source.transformer_config)
    for stack in family.stacks:
        config[stack.count_key] = 2 if stack.pre_only_last else 1
    cut = dataclasses.replace(source, name=f"{model} (one block per stack)", transformer_config=config,
                              layout=family.layout(config))
    loaded = _load(model, device, dtype, True, cut)
    generator = Generator(loaded)
    transformer = loaded.transformer
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    size = torch.tensor([], dtype=loaded.dtype).element_size()
    meter = Meter(loaded.device, tensors=True)
    peaks: dict[str, int] = {}
    hooks = []
    measured = []
    for stack in family.stacks:
        blocks = getattr(transformer, stack.attr)
        # The first block of each stack, and SD3's "context pre-only" last block, which differs.
        for name, block in [(stack.name, blocks[0])] + ([(f"{stack.name} last", blocks[-1])] if stack.pre_only_last else []):
            measured.append(name)
            hooks.append(block.register_forward_pre_hook(lambda _m, _a: meter.begin()))
            hooks.append(block.register_forward_hook(
                lambda _m, _a, _o, name=name: peaks.__setitem__(name, max(peaks.get(name, 0), meter.peak()))))
    rows: dict[str, list[tuple[int, int, int]]] = {name: [] for name in measured}
    text = text_tokens(source, source.defaults.max_sequence_length)
    multiple = source.size_multiple
    for side in sides:
        settings = resolve_settings(source.defaults, plans.Sampling(width=side * multiple, height=side * multiple,
                                                                    steps=1, guidance=1.0))
        for _ in range(2):  # the first call pays lazy initialisation
            peaks.clear()
            generator.generate(PROMPT, settings, plans.Plan(), decode=False)
        for name, peak in peaks.items():
            rows[name].append((side * side, text, peak))
    for hook in hooks:
        hook.remove()
    fits = {}
    for name, ((s1, t, p1), (s2, _t, p2)) in rows.items():
        unit = width * size
        image = (p2 - p1) / unit / (s2 - s1)
        fits[name] = {"image": round(image, 2), "text": round((p1 / unit - image * s1) / t, 2),
                      "samples": [{"image_tokens": s, "text_tokens": t, "peak": p} for s, t, p in rows[name]]}
    return {"model": model, "family": family.name, "width": width, "dtype": str(loaded.dtype).removeprefix("torch."),
            "device": str(loaded.device), "stacks": fits, "attention": attention_probe(loaded.device, loaded.dtype)}


def attention_probe(device: Any, dtype: Any, tokens: int = 8192, heads: int = 8) -> dict[str, Any]:
    """Whether scaled_dot_product_attention materialises the N x N matrix here (peak growth vs its size)."""
    import torch

    q = torch.randn(1, heads, tokens, 64, device=device, dtype=dtype)
    meter = Meter(torch.device(device), tensors=True)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    meter.begin()
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    peak = meter.peak()
    matrix = heads * tokens * tokens * q.element_size()
    del out
    return {"tokens": tokens, "heads": heads, "peak": peak, "matrix": matrix, "materialised": peak >= matrix // 2}


# ----------------------------------------------------------------------------------- in the parent


EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: blocks of 64 KiB and more mapped, unmapped on free


def run_child(task: dict[str, Any], timeout: float = 3600, exact: bool = False) -> dict[str, Any]:
    """A measurement in a fresh interpreter (`exact`: with glibc mapping every block of 64 KiB or more);
    its JSON answer (an error is raised with its last lines)."""
    env = {**os.environ, "TQDM_DISABLE": "1", **(EXACT_MALLOC if exact else {})}
    done = subprocess.run([sys.executable, "-m", "dit_explore.engine.memory_bench", "--child", json.dumps(task)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"measurement {task} failed ({done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def compare(model: str, width: int, height: int, device: str, dtype: str | None, random_weights: bool,
            repeat: int) -> dict[str, Any]:
    """Estimate and measured peaks of one request: as the engine runs (the largest of `repeat` fresh
    processes), and on CPU with exact allocation too (the tensors' own peak)."""
    task = {"kind": "generation", "model": model, "width": width, "height": height, "device": device, "dtype": dtype,
            "random_weights": random_weights}
    runs = [run_child(task) for _ in range(repeat)]
    first = runs[0]
    kind = "cuda" if first["device"].startswith("cuda") else "cpu"
    exact = run_child(task, exact=True) if kind == "cpu" else {"peak": max(r["peak_allocated"] for r in runs)}
    guess: MemoryEstimate = estimate(resolve(model), width, height, dtype=first["dtype"], device_kind=kind,
                                     random_weights=random_weights)
    peak = max(r["peak"] for r in runs)
    tensors = guess.working - guess.allocator  # the largest phase and the runtime, without the allocator's share
    return {
        "model": model, "size": f"{width}x{height}", "device": first["device"], "dtype": first["dtype"],
        "estimate": guess.working, "estimate_tensors": tensors, "estimate_phase": guess.phase,
        "estimate_phases": dict(guess.phases), "estimate_runtime": guess.runtime, "estimate_allocator": guess.allocator,
        "measured": peak, "measured_min": min(r["peak"] for r in runs), "ratio": guess.working / peak if peak else None,
        "measured_tensors": exact["peak"] if exact else None,
        "ratio_tensors": tensors / exact["peak"] if exact and exact["peak"] else None,
        "estimate_decode": guess.phases.get("VAE decode"), "measured_decode": max(r["decode"] for r in runs),
        "estimate_denoise": guess.phases["denoising"], "measured_denoise": max(r["denoise"] for r in runs),
        "estimate_weights": guess.weights, "measured_weights": first["weights_bytes"], "runs": runs, "exact": exact,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("model", "size", "estimate", "measured (min-max of runs)", "est/max", "tensors est", "tensors", "est/tensors",
            "weights est/actual")
    cells = [head]
    for r in rows:
        exact = r.get("measured_tensors")
        cells.append((r["model"], r["size"], f"{format_bytes(r['estimate'])} ({r['estimate_phase']})",
                      f"{format_bytes(r['measured_min'])}-{format_bytes(r['measured'])}",
                      f"{r['ratio']:.2f}" if r["ratio"] else "-", format_bytes(r["estimate_tensors"]),
                      format_bytes(exact) if exact else "-",
                      f"{r['ratio_tensors']:.2f}" if r.get("ratio_tensors") else "-",
                      f"{format_bytes(r['estimate_weights'])} / {format_bytes(r['measured_weights'])}"))
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_explore.engine.memory_bench",
                                description="the memory estimator against measured peaks (a table, and JSON)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated aliases")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated square sides (px)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--random-weights", action="store_true", help="real-size aliases from their configs")
    p.add_argument("--repeat", type=int, default=None, help="fresh processes per size (default 3 on CPU, 1 on CUDA)")
    p.add_argument("--blocks", action="store_true", help="per-block activation coefficients instead (MemorySpec)")
    p.add_argument("--json", type=Path, default=None, help="where to write the results (default memory-bench.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return _child(json.loads(args.child))
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    models = [m for m in args.models.split(",") if m]
    out_path = args.json or Path("memory-bench.json")
    if args.blocks:
        results = [run_child({"kind": "blocks", "model": m, "device": args.device, "dtype": args.dtype}, exact=True)
                   for m in (models if args.models != ",".join(DEFAULT_MODELS) else BLOCK_MODELS)]
        for r in results:
            declared = resolve(r["model"]).family_info.memory
            for name, fit in r["stacks"].items():
                print(f"{r['family']:9s} {name:7s} width {r['width']:5d} {r['dtype']:9s} measured: "
                      f"{fit['image']:5.2f} x image + {fit['text']:5.2f} x text tokens"
                      + (f"   declared: {declared.image_activations} x image + {declared.text_activations} x text"
                         if declared else ""))
            a = r["attention"]
            print(f"{'':9s} attention {a['tokens']} tokens x {a['heads']} heads on {r['device']}: peak "
                  f"{format_bytes(a['peak'])} vs {format_bytes(a['matrix'])} for the matrix: "
                  f"{'materialised' if a['materialised'] else 'not materialised'}")
        out_path.write_text(json.dumps({"blocks": results}, indent=1) + "\n", encoding="utf-8")
        say(f"wrote {out_path}")
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    for model in models:
        source = resolve(model)
        for side in sizes:
            try:
                source.check_size(side, side)
            except ModelError as exc:
                say(f"skipping {model} {side}x{side}: {exc}")
                continue
            repeat = args.repeat or (1 if args.device.startswith("cuda") else 3)
            say(f"{model} {side}x{side}: {repeat} fresh process(es)…")
            rows.append(compare(model, side, side, args.device, args.dtype, args.random_weights, repeat))
    print(table(rows))
    outside = [run["outside_allocator"] for r in rows for run in r["runs"] if "outside_allocator" in run]
    if outside:
        print(f"\nCUDA memory outside the caching allocator (context, library handles): "
              f"{format_bytes(min(outside))}-{format_bytes(max(outside))} (estimate's context: "
              f"{format_bytes(estimate(resolve(rows[0]['model']), 64, 64, device_kind='cuda').context)})")
    for key, what in (("ratio", "the largest run"),
                      ("ratio_tensors", "the tensors' peak (CPU: exact allocation; CUDA: allocated bytes)")):
        ratios = [r[key] for r in rows if r.get(key)]
        if ratios:
            print(f"\nestimate / {what}: {min(ratios):.2f} to {max(ratios):.2f}; "
                  f"{sum(x < 1.0 for x in ratios)} underestimated, {sum(x > 1.2 for x in ratios)} over by more than 20%")
    out_path.write_text(json.dumps({"rows": rows}, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {out_path}")
    return 0


def _child(task: dict[str, Any]) -> int:
    from dit_explore.engine.models import quiet_libraries

    quiet_libraries()
    kind = task.pop("kind")
    if kind == "generation":
        result = measure_generation(**task)
    else:
        result = measure_blocks(task["model"], task["device"], task["dtype"], (32, 64))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
