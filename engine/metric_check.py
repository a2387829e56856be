"""Which offline metric agrees with what a toy model actually drew? Spearman rank agreement over many plans.

    python -m dit_explore.engine.metric_check [MODEL] --out DIR [--captions N] [--random N] [--device cpu]

The plans: every plan of the five sweep kinds (engine/sweep.py, on the model's middle group), the study's
saved strategies, and `--random` seeded random plans (a random set of one to half the blocks of a random
stack left out). Each runs on N captions of the shapes grammar (a fixed spread, `eval`'s shuffle; caption i
with seed i) through `study.measure_item`, so every image gets the offline metrics against the full model's
image and the weight-free scorer's all-correct. Per plan, the mean of each metric and the share of captions
drawn right; then, over the plans, Spearman's rank correlation (torchmetrics) of each metric with that share
(MAD's sign flipped, so that higher agrees). Writes `rows.json` (every image), `plans.csv` (per plan) and
`agreement.md`/`agreement.json` to DIR.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dit_explore.engine.core import plan as plans

METRICS = ("ssim", "psnr", "mad", "haarpsi", "fsim")


def random_plans(layout: Any, count: int, seed: int) -> list[tuple[str, plans.Plan]]:
    rng = random.Random(seed)
    out: list[tuple[str, plans.Plan]] = []
    seen: set[str] = set()
    while len(out) < count:
        stack = rng.choice(layout.stacks)
        k = rng.randint(1, max(1, stack.blocks // 2))
        left = sorted(rng.sample(range(stack.blocks), k))
        label = f"{stack.name}: without {', '.join(map(str, left))}"
        if label in seen:
            continue
        seen.add(label)
        order = tuple(b for b in range(stack.blocks) if b not in left)
        out.append((label, plans.Plan(name=label).with_order(stack.name, order)))
    return out


def agreement(per_plan: list[dict[str, Any]]) -> dict[str, float | None]:
    """Spearman's rho of each metric's per-plan mean with the per-plan share drawn right (MAD negated)."""
    import torch
    from torchmetrics.functional.regression import spearman_corrcoef

    out: dict[str, float | None] = {}
    for metric in METRICS:
        pairs = [(p[metric], p["all_correct"]) for p in per_plan
                 if p.get(metric) is not None and p["all_correct"] is not None]
        if len(pairs) < 3:
            out[metric] = None
            continue
        x = torch.tensor([(-v if metric == "mad" else v) for v, _ in pairs], dtype=torch.float64)
        y = torch.tensor([a for _, a in pairs], dtype=torch.float64)
        out[metric] = float(spearman_corrcoef(x, y))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.engine.metric_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="toy-flux")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--captions", type=int, default=6)
    parser.add_argument("--random", type=int, default=50, help="random plans added to the sweeps' (default 50)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from dit_explore.engine import headless
    from dit_explore.engine.analysis import cached_analysis
    from dit_explore.engine.core.catalog import analysis_prompts, is_toy
    from dit_explore.engine.core.resolve import ModelError, resolve
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.core.shapes import CAPTIONS
    from dit_explore.engine.core.similarity import DEFAULT_PROMPTS
    from dit_explore.engine.core.study import shipped_plans_dir
    from dit_explore.engine.eval import selected
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.study import StudyPlan, measure_item
    from dit_explore.engine.sweep import KINDS, largest_middle, sweep_items

    try:
        source = resolve(args.model)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not is_toy(source.name) or not 3 <= args.captions <= len(CAPTIONS) or args.random < 0 or args.out.exists():
        print("error: a toy model, 3 to 324 captions, --random >= 0 and a new --out are needed", file=sys.stderr)
        return 2
    settings = resolve_settings(source.defaults)
    generator = Generator(headless._load(source, headless.ModelOptions(device=args.device)))
    analysis, _ = cached_analysis(generator, list(analysis_prompts(source.name, DEFAULT_PROMPTS)), settings)
    middle = largest_middle(source.layout, {n: list(s.groups) for n, s in analysis.stacks.items()})
    todo: list[tuple[str, plans.Plan]] = []
    for kind in KINDS:
        todo += [(f"{kind}: {i.label}", i.plan) for i in sweep_items(kind, source.layout, middle, settings.steps,
                                                                      max(1, settings.steps // 4), None)]
    todo += [(f"saved: {f.stem}", plans.load(f)) for f in sorted((shipped_plans_dir() / source.name).glob("*.plan.toml"))]
    todo += random_plans(source.layout, args.random, seed=0)
    captions = [CAPTIONS[i] for i in selected(args.captions)]
    folder = args.out
    (folder / "images").mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for c, caption in enumerate(captions):
        seed = CAPTIONS.index(caption)
        full_row, full_image = measure_item(generator, StudyPlan("full model", None, plans.Plan()), caption, seed,
                                            settings, None, folder, f"images/c{c}-full.png", True, is_full=True)
        assert full_image is not None
        full = (full_image, full_row["ms_per_step"])
        for k, (label, plan) in enumerate(todo):
            row, _ = measure_item(generator, StudyPlan(label, None, plan), caption, seed, settings, full, folder,
                                  f"images/c{c}-{k:03d}.png", True)
            rows.append(row)
        print(f"[{c + 1}/{len(captions)}] {caption}: {len(todo)} plans ({time.perf_counter() - started:.0f} s)",
              flush=True)
    per_plan = []
    for label, _ in todo:
        mine = [r for r in rows if r["plan"] == label and r["error"] is None]
        per_plan.append({"plan": label, "images": len(mine),
                         **{m: (statistics.fmean(r[m] for r in mine if r.get(m) is not None)
                                if any(r.get(m) is not None for r in mine) else None) for m in METRICS},
                         "all_correct": statistics.fmean(bool(r["all_correct"]) for r in mine) if mine else None})
    rho = agreement(per_plan)
    best = max((m for m in METRICS if rho[m] is not None), key=lambda m: rho[m] or -2.0, default=None)
    ranked = {m: sum(1 for p in per_plan if p[m] is not None and p["all_correct"] is not None)
              for m in METRICS}
    report = {"model": source.name, "plans": len(todo), "captions": captions, "steps": settings.steps,
              "spearman_with_all_correct": rho, "plans_ranked": ranked, "best": best,
              "seconds": round(time.perf_counter() - started, 1)}
    (folder / "rows.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    (folder / "agreement.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["plan", "images", *METRICS, "all_correct"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(per_plan)
    (folder / "plans.csv").write_text(buffer.getvalue(), encoding="utf-8")
    lines = [f"# Offline metrics against what {source.name} drew", "",
             f"{len(todo)} plans × {len(captions)} captions, {settings.steps} steps. Spearman's rank correlation, over "
             "the plans, of each metric's mean against the full model's image with the share of captions drawn "
             "with every attribute right (MAD negated; PSNR over the plans whose images differ from the full model's):",
             "", "| metric | Spearman ρ | plans ranked |", "|---|---:|---:|"]
    lines += [f"| {m} | {'—' if rho[m] is None else format(rho[m], '.3f')} | {ranked[m]} |" for m in METRICS]
    lines += ["", f"Agrees best: {best}."]
    (folder / "agreement.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
