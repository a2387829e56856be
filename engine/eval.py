"""`dit-explore eval MODEL`: how well a model draws the captioned-shapes grammar, and what a plan costs it.

Every caption of engine/core/shapes.py (or, with `--limit N`, the first N of a fixed shuffle) is
generated through the one generation path (`Generator.generate`, as `dit-explore run` does), one image per
caption, caption `i` (its index in CAPTIONS) with seed `S + i`, so an image does not depend on which
other captions ran or in which order. Each image is scaled to 64×64 when the model's size differs (box
filter) and read back by the weight-free scorer (shapes.read_back). Printed: per-attribute and
all-correct accuracy against chance, the mean seconds per image, and the plan's block executions against
the full model's; `--json` writes them with every image's reading.

Input is checked before the model loads, as for `run` (plan syntax, blocks and steps, seed range,
`--limit`, the JSON path): a problem is one line and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from dit_explore.engine import headless
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.resolve import ModelError, ModelSource
from dit_explore.engine.core.sampling import Settings, resolve_settings
from dit_explore.engine.core.shapes import ATTRIBUTE_NAMES, ATTRIBUTES, CAPTIONS, CHANCE, Reading, read_back, tally
from dit_explore.engine.core.text import shown

SCORE_SIZE = 64  # the side the scorer reads at: the toy models' training size
MAX_SEED = 2**63 - 1


def caption_order() -> tuple[int, ...]:
    """Indices into CAPTIONS sorted by the SHA-256 of their caption: a fixed shuffle (independent of any
    random generator's version), so `--limit N` always takes the same N captions, spread over the grammar
    rather than its first rows (which are all small red circles)."""
    return tuple(sorted(range(len(CAPTIONS)), key=lambda i: hashlib.sha256(CAPTIONS[i].encode()).hexdigest()))


def selected(limit: int | None) -> list[int]:
    """The caption indices an eval runs, in CAPTIONS order: all, or the first `limit` of caption_order()."""
    return sorted(caption_order()[:limit]) if limit is not None else list(range(len(CAPTIONS)))


def for_scoring(image: Image.Image) -> np.ndarray:
    """A generated image as the scorer reads it: RGB, SCORE_SIZE × SCORE_SIZE (box-filtered when the
    model's size differs; the scorer's geometry is in fractions of each side, so a non-square image
    keeps its cells)."""
    rgb = image.convert("RGB")
    if rgb.size != (SCORE_SIZE, SCORE_SIZE):
        rgb = rgb.resize((SCORE_SIZE, SCORE_SIZE), Image.Resampling.BOX)
    return np.asarray(rgb)


def _reading_json(reading: Reading) -> dict[str, str | None]:
    return {name: getattr(reading, name) for name in ATTRIBUTE_NAMES}


def evaluate(req: headless.EvalRequest) -> int:
    """`dit-explore eval`: check, load, generate, score, report."""
    source, cli = headless.model_and_sampling(req.model, req.sampling)
    plan = headless.load_plan_for(source, req.plan)
    if req.limit is not None and not 1 <= req.limit <= len(CAPTIONS):
        raise headless.UsageError(f"--limit {req.limit}: must be between 1 and {len(CAPTIONS)}")
    indices = selected(req.limit)
    settings = resolve_settings(source.defaults, plan.sampling, cli)
    try:
        source.check_size(settings.width, settings.height)
        plans.validate_steps(plan, settings.steps, source=req.plan or "plan")
        plans.validate_guidance(plan, source.layout, settings.guidance, source=req.plan or "plan")
    except (plans.PlanError, ModelError) as exc:
        raise headless.UsageError(str(exc)) from None
    if settings.seed + indices[-1] > MAX_SEED:
        raise headless.UsageError(f"--seed {settings.seed}: caption i runs with seed + i, so the seed must be at most "
                                  f"2**63-1-{indices[-1]}")
    if req.json_path is not None and (req.json_path.is_dir() or req.json_path.parent.is_file()):
        raise headless.UsageError(f"--json {shown(req.json_path)}: not a file path (a folder, or under a file)")
    placement = headless.check_memory(source, settings, req.options)
    report = _run(req, source, plan, settings, indices, placement)
    print(_summary(report))
    if req.json_path is not None:
        from dit_explore.engine.core.runs import write_atomic

        try:
            req.json_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(req.json_path, (json.dumps(report, indent=1) + "\n").encode())
        except OSError as exc:
            raise headless.UsageError(f"--json {shown(req.json_path)}: cannot write it: {exc.strerror or exc}") \
                from None
        headless._say(f"wrote {shown(req.json_path)}")
    return 0


def _run(req: headless.EvalRequest, source: ModelSource, plan: plans.Plan, settings: Settings,
         indices: list[int], placement: Any = None) -> dict[str, Any]:
    """Generate and read back every selected caption; the report (what --json writes)."""
    from dit_explore.engine.generate import Generator, NonFiniteError, run_record

    loaded = headless._load(source, req.options, placement)
    headless._say(f"{source.name} ready in {loaded.load_seconds:.1f} s ({loaded.device}, {loaded.precision}); "
                  f"{source.layout.describe()}")
    generator = Generator(loaded, on_warning=lambda message: headless._say(f"warning: {message}"))
    images: list[dict[str, Any]] = []
    readings: list[Reading] = []
    seconds: list[float] = []
    block_runs: Any = None
    for k, i in enumerate(indices):
        caption = CAPTIONS[i]
        try:
            result = generator.generate(caption, replace(settings, seed=settings.seed + i), plan)
        except NonFiniteError as exc:
            raise headless.UsageError(str(exc)) from None
        assert result.image is not None  # decoded: generate's default
        reading = read_back(for_scoring(result.image))
        hits = reading.matches(ATTRIBUTES[i])
        readings.append(reading)
        seconds.append(result.timing.total)
        block_runs = result.block_runs
        images.append({"index": i, "caption": caption, "seed": settings.seed + i, "reading": _reading_json(reading),
                       "correct": {**hits, "all": all(hits.values())},
                       "seconds": result.timing.total})
        verdict = "correct" if all(hits.values()) else "read " + ", ".join(str(v) for v in _reading_json(reading).values())
        headless._say(f"[{k + 1}/{len(indices)}] {result.timing.total:.2f} s  {caption}: {verdict}")
    scores = tally(readings, [CAPTIONS[i] for i in indices])
    report = run_record(loaded, plan, req.plan, [CAPTIONS[i] for i in indices], settings)
    report.update({
        "seeds": "seed + caption index",
        "limit": req.limit,
        "scored_at": [SCORE_SIZE, SCORE_SIZE],
        "scores": scores.to_json(),
        "seconds_per_image": {
            "mean": statistics.fmean(seconds),
            # the first image also pays for warm-up (allocations, kernel selection)
            "warm_mean": statistics.fmean(seconds[1:]) if len(seconds) > 1 else None,
        },
        "block_runs": {
            "per_image": block_runs.total,
            "full_per_image": block_runs.full_total,
            "predicted_speedup": block_runs.predicted_speedup,
        },
        "images": images,
    })
    return report


def _summary(report: dict[str, Any]) -> str:
    """The printed report: accuracy per attribute against chance, time, block executions."""
    scores, blocks, secs = report["scores"], report["block_runs"], report["seconds_per_image"]
    sampling, plan = report["sampling"], report["plan"]
    orders = "identity" if plan["identity"] else "; ".join(f"{k} {v}" for k, v in plan["orders"].items())
    lines = [f"{report['model']['name']}: {scores['n']} captions, {sampling['steps']} steps, guidance "
             f"{sampling['guidance']:g}, seed {sampling['seed']} + caption index, {sampling['width']}x{sampling['height']}"
             f" (scored at {SCORE_SIZE}x{SCORE_SIZE}); plan: {orders}",
             f"{'attribute':<10} {'correct':>9} {'accuracy':>9} {'chance':>8}"]
    for name in (*ATTRIBUTE_NAMES, "all"):
        lines.append(f"{name:<10} {scores['correct'][name]:>4}/{scores['n']:<4} {scores['accuracy'][name]:>9.1%} "
                     f"{CHANCE[name]:>8.1%}")
    warm = f" ({secs['warm_mean']:.3f} s without the first)" if secs["warm_mean"] is not None else ""
    lines.append(f"seconds per image: {secs['mean']:.3f}{warm}")
    speedup = blocks["predicted_speedup"]
    lines.append(f"block executions per image: {blocks['per_image']} of the full model's {blocks['full_per_image']}"
                 + (f", predicted speedup {speedup:.2f}x" if speedup is not None else ""))
    return "\n".join(lines)
