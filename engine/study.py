"""`dit-explore study MODEL --out DIR`: the Painters study as one command.

The full model and each plan (by default the study's six saved strategies for MODEL, saved_plans/MODEL/:
skip first block, skip middle, middle repeat, reverse, parallel, looped parallel; any plan files with
`--plans`) on every prompt and seed, through the one generation path (Generator, as `run` does). Each
plan's image is measured against the full model's image of the same prompt and seed with offline metrics
(engine/metrics.py: PSNR, MAD, SSIM, MS-SSIM where the image is large enough) and, for the toy models on
captions of their grammar, the weight-free scorer's reading (engine/core/shapes.py). Written to DIR,
built in a staging folder and renamed into place whole:

- `contact_sheet.png`: rows = the full model and the plans, columns = prompts (× seeds), labelled; for
  toy captions a cell's corner says whether the scorer reads every attribute back;
- `results.csv` and `results.json`: one row per plan × prompt × seed: the metrics, the transformer's median
  milliseconds per warm step, block executions per image, the predicted speedup and the measured one (the
  full model's time per step over the plan's, for the same prompt and seed), the image's file;
- `summary.md`: per plan, the means over prompts and seeds;
- `images/`: every image.

A plan that fails on one image (non-finite latents) is recorded with its error and the study goes on.
Input is checked before the model loads: one line and exit code 2.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from dit_explore.engine import headless
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import analysis_prompts, is_toy
from dit_explore.engine.core.resolve import ModelError, ModelSource
from dit_explore.engine.core.sampling import Settings, resolve_settings
from dit_explore.engine.core.shapes import ATTRIBUTES, CAPTIONS
from dit_explore.engine.core.text import shown

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
CONTACT_SHEET = "contact_sheet.png"
MAX_PLANS = 64
MAX_SEEDS = 100
MAX_IMAGES = 5000  # (plans + 1) × prompts × seeds
MAX_SEED = 2**63 - 1
FULL = "full model"
CSV_FIELDS = ("plan", "plan_file", "prompt", "seed", "error", "identical", "psnr", "mad", "ssim", "ms_ssim",
              "haarpsi", "fsim", "all_correct", "size", "color", "shape", "position", "ms_per_step", "block_executions",
              "predicted_speedup", "measured_speedup", "image")


@dataclass(frozen=True)
class StudyPlan:
    label: str  # the plan's name, else its file's stem
    file: str | None  # None for the full model
    plan: plans.Plan


def _plans(source: ModelSource, files: tuple[str, ...]) -> list[StudyPlan]:
    from dit_explore.engine.core.study import shipped_plans_dir

    if not files:
        folder = shipped_plans_dir() / source.name
        found = sorted(folder.glob(f"*{plans.PLAN_SUFFIX}")) if folder.is_dir() else []
        if not found:
            raise headless.UsageError(f"no saved plans for {source.name}: name the plans to study with --plans FILE ...")
        files = tuple(str(f) for f in found)
        shown_as = {str(f): f"saved_plans/{f.relative_to(shipped_plans_dir()).as_posix()}" for f in found}
    else:
        shown_as = {}
    if len(files) > MAX_PLANS:
        raise headless.UsageError(f"--plans: {len(files)} files, at most {MAX_PLANS}")
    out = []
    for name in files:
        plan = headless.load_plan_for(source, name)
        label = plan.name or Path(name).name.removesuffix(plans.PLAN_SUFFIX)
        out.append(StudyPlan(label, shown_as.get(name, name), plan))
    return out


def check_seeds(seeds: tuple[int, ...], default: int | None) -> list[int]:
    chosen = list(seeds) or [default or 0]
    if len(chosen) > MAX_SEEDS:
        raise headless.UsageError(f"--seeds: {len(chosen)} seeds, at most {MAX_SEEDS}")
    if len(set(chosen)) != len(chosen):
        raise headless.UsageError("--seeds: a seed is named twice")
    bad = next((s for s in chosen if not 0 <= s <= MAX_SEED), None)
    if bad is not None:
        raise headless.UsageError(f"--seeds {bad}: must be between 0 and 2**63-1")
    return chosen


def study(req: headless.StudyRequest) -> int:
    """Check everything, claim --out, load, generate, measure, write (see the module)."""
    from dit_explore.engine.core.runs import OutputError, StagedDirectory, check_destination
    from dit_explore.engine.core.similarity import DEFAULT_PROMPTS

    source, cli = headless.model_and_sampling(req.model, req.sampling)
    studied = _plans(source, req.plan_files)
    prompts = (headless.read_prompts(list(req.prompts), req.prompts_file, None) if req.prompts or req.prompts_file
               else list(analysis_prompts(source.name, DEFAULT_PROMPTS)))
    seeds = check_seeds(req.seeds, req.sampling.seed)
    images = (len(studied) + 1) * len(prompts) * len(seeds)
    if images > MAX_IMAGES:
        raise headless.UsageError(f"{len(studied) + 1} plans x {len(prompts)} prompts x {len(seeds)} seeds = "
                                  f"{images} images, at most {MAX_IMAGES}")
    settings = resolve_settings(source.defaults, cli)
    try:
        source.check_size(settings.width, settings.height)
        for item in studied:
            plans.validate_steps(item.plan, settings.steps, source=item.file or "plan")
            plans.validate_guidance(item.plan, source.layout, settings.guidance, source=item.file or "plan")
        check_destination(req.out, req.overwrite, RESULTS_JSON, "study")
    except (plans.PlanError, ModelError, ValueError) as exc:
        raise headless.UsageError(str(exc)) from None
    placement = headless.check_memory(source, settings, req.options)
    try:
        staged = StagedDirectory(req.out, req.overwrite, marker=RESULTS_JSON, what="study")
    except OutputError as exc:
        raise headless.UsageError(str(exc)) from None
    try:
        return _run(req, source, studied, prompts, seeds, settings, staged, placement)
    finally:
        staged.abort()  # nothing once committed


def _run(req: headless.StudyRequest, source: ModelSource, studied: list[StudyPlan], prompts: list[str], seeds: list[int],
         settings: Settings, staged: Any, placement: Any = None) -> int:
    from dit_explore.engine.core.runs import OutputError
    from dit_explore.engine.generate import Generator, run_record

    loaded = headless._load(source, req.options, placement)
    headless._say(f"{source.name} ready in {loaded.load_seconds:.1f} s ({loaded.device}, {loaded.precision}); "
                  f"{source.layout.describe()}")
    generator = Generator(loaded, on_warning=lambda message: headless._say(f"warning: {message}"))
    (staged.staging / "images").mkdir()
    every = [StudyPlan(FULL, None, plans.Plan()), *studied]
    toy = is_toy(source.name)
    rows: list[dict[str, Any]] = []
    columns = [(p, s) for p in range(len(prompts)) for s in seeds]
    started = time.perf_counter()
    for c, (p, seed) in enumerate(columns):
        prompt = prompts[p]
        full: tuple[Image.Image, float] | None = None
        for r, item in enumerate(every):
            row, image = measure_item(generator, item, prompt, seed, settings, full, staged.staging,
                                      f"images/p{p:03d}-s{seed}-{r:02d}.png", toy, is_full=r == 0)
            if r == 0 and image is not None:
                full = image, row["ms_per_step"]
            if row["error"] is not None:
                headless._say(f"[{c + 1}/{len(columns)}] {item.label}: {row['error']}")
            rows.append(row)
        headless._say(f"[{c + 1}/{len(columns)}] {len(every)} plans  {prompt!r} seed {seed}  "
                      f"({time.perf_counter() - started:.1f} s)")
    record = run_record(loaded, plans.Plan(), None, prompts, settings)
    record.pop("plan", None)
    # Each plan's default orders, and its whole text (step tables, active steps, cached spans: what ran).
    record.update({"seeds": seeds, "plans": [{"label": i.label, "file": i.file, "orders":
                                              {s: plans.format_order(o) for s, o in i.plan.orders},
                                              "text": plans.dumps(i.plan)} for i in every],
                   "metrics": "against the full model's image of the same prompt and seed (engine/metrics.py)",
                   "rows": rows, "summary": summarize(rows, [i.label for i in every])})
    try:
        (staged.staging / RESULTS_JSON).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        (staged.staging / RESULTS_CSV).write_text(to_csv(rows), encoding="utf-8")
        (staged.staging / SUMMARY_MD).write_text(summary_markdown(record), encoding="utf-8")
        results_sheet(staged.staging, [i.label for i in every], rows, prompts, seeds, settings).save(
            staged.staging / CONTACT_SHEET)
        out = staged.commit()
    except OutputError as exc:
        raise headless.UsageError(str(exc)) from None
    except OSError as exc:
        raise headless.UsageError(f"--out {shown(req.out)}: cannot write the study: {exc.strerror or exc}; "
                                  "nothing kept") from None
    headless._say(f"wrote {shown(req.out if out == staged.out else out)}/ ({CONTACT_SHEET}, {RESULTS_CSV}, "
                  f"{RESULTS_JSON}, {SUMMARY_MD}, {len([r for r in rows if r.get('image')])} images) in "
                  f"{time.perf_counter() - started:.1f} s")
    return 0


def measure_item(generator: Any, item: StudyPlan, prompt: str, seed: int, settings: Settings,
                 full: tuple[Image.Image, float] | None, folder: Path, name: str,
                 toy: bool, is_full: bool = False) -> tuple[dict[str, Any], Image.Image | None]:
    """One plan on one prompt and seed: its image saved as `folder/name`, and its row (`image_row`). A
    non-finite result is the row's error (no image)."""
    from dit_explore.engine.generate import NonFiniteError

    row: dict[str, Any] = {"plan": item.label, "plan_file": item.file, "prompt": prompt, "seed": seed, "error": None}
    try:
        result = generator.generate(prompt, replace(settings, seed=seed), item.plan)
    except NonFiniteError as exc:
        row["error"] = str(exc)
        return row, None
    assert result.image is not None
    timing = result.timing
    step = timing.warm_step or timing.transformer_total / max(len(timing.transformer_steps), 1)
    image_row(row, result.image, folder, name, step * 1000, result.block_runs, full, toy, is_full,
              device=metrics_device(generator))
    return row, result.image


def metrics_device(generator: Any) -> Any:
    """Where the metrics of `generator`'s images are computed: its device (None, the CPU, for a stand-in)."""
    return getattr(getattr(generator, "loaded", None), "device", None)


def image_row(row: dict[str, Any], image: Image.Image, folder: Path, name: str, ms: float, runs: Any,
              full: tuple[Image.Image, float] | None, toy: bool, is_full: bool = False, device: Any = None) -> None:
    """Complete `row` (its plan, prompt and seed) with one generated image: the image saved atomically as
    `folder/name`; the transformer's `ms` per step for this image and the block executions (`runs`); the
    metrics against `full` (the full model's image and ms per step; the full model itself, `is_full`, is
    compared with itself; a plan whose full model failed gets no metrics), computed on `device` (the
    generator's: a GPU measures its own images; default the CPU); the toy scorer's reading of a grammar
    caption."""
    image_rows([row], [image], folder, [name], ms, runs, [full], toy, is_full, device)


def image_rows(rows: list[dict[str, Any]], images: list[Image.Image], folder: Path, names: list[str], ms: float,
               runs: Any, fulls: list[tuple[Image.Image, float] | None], toy: bool, is_full: bool = False,
               device: Any = None) -> None:
    """`image_row` for the images of one batch (one plan), their metrics computed together (`compare_many`)."""
    from dit_explore.engine.core.runs import write_atomic
    from dit_explore.engine.core.shapes import read_back
    from dit_explore.engine.eval import for_scoring
    from dit_explore.engine.metrics import compare_many

    for row, image, name in zip(rows, images, names):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_atomic(folder / name, buffer.getvalue())
        row.update({"ms_per_step": ms, "block_executions": runs.total, "predicted_speedup": runs.predicted_speedup,
                    "image": name, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})
    references = [(image, ms) if is_full else full for image, full in zip(images, fulls)]
    measured = [i for i, reference in enumerate(references) if reference is not None]
    comparisons = compare_many([(images[i], references[i][0]) for i in measured], device)  # type: ignore[index]
    for i, comparison in zip(measured, comparisons):
        reference_ms = references[i][1]  # type: ignore[index]
        rows[i].update({"measured_speedup": reference_ms / ms if ms else None, **comparison.to_json()})
    for row, image in zip(rows, images):
        prompt = row["prompt"]
        if toy and prompt in CAPTIONS:
            hits = read_back(for_scoring(image)).matches(ATTRIBUTES[CAPTIONS.index(prompt)])
            row.update({**hits, "all_correct": all(hits.values())})


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return statistics.fmean(numbers) if numbers else None


def summarize(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Per plan (in order): images, errors, means of the metrics (PSNR over the non-identical images) and
    of the toy scorer's all-correct, median ms per step and measured speedup, block executions."""
    out = []
    for label in labels:
        mine = [r for r in rows if r["plan"] == label]
        ok = [r for r in mine if r["error"] is None]
        correct = [r["all_correct"] for r in ok if r.get("all_correct") is not None]
        measured = [r["measured_speedup"] for r in ok if r.get("measured_speedup") is not None]
        out.append({
            "plan": label, "images": len(ok), "errors": len(mine) - len(ok),
            "identical": sum(1 for r in ok if r.get("identical")),
            "psnr": _mean([r.get("psnr") for r in ok]), "mad": _mean([r.get("mad") for r in ok]),
            "ssim": _mean([r.get("ssim") for r in ok]), "ms_ssim": _mean([r.get("ms_ssim") for r in ok]),
            "haarpsi": _mean([r.get("haarpsi") for r in ok]), "fsim": _mean([r.get("fsim") for r in ok]),
            "all_correct": (sum(correct) / len(correct)) if correct else None,
            "ms_per_step": statistics.median(r["ms_per_step"] for r in ok) if ok else None,
            "measured_speedup": statistics.median(measured) if measured else None,
            "predicted_speedup": ok[0]["predicted_speedup"] if ok else None,
            "block_executions": ok[0]["block_executions"] if ok else None,
        })
    return out


def to_csv(rows: list[dict[str, Any]], fields: Sequence[str] = CSV_FIELDS) -> str:
    """`fields` of each row, one line a row (a missing or None value: an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    return buffer.getvalue()


def _cell(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _count(value: Any) -> str:
    """Block executions: whole numbers as such; a guidance-branch plan's halves with one decimal."""
    if value is None:
        return "—"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def summary_markdown(record: dict[str, Any]) -> str:
    model = record.get("model", {})
    name = model.get("name") if isinstance(model, dict) else model
    s = record.get("sampling", {})
    lines = [f"# Study: {name}", "",
             f"{len(record['rows'])} images: {len(record['plans'])} plans × {len(record['prompts'])} prompts × "
             f"{len(record['seeds'])} seeds; {s.get('steps')} steps, {s.get('width')}×{s.get('height')}, guidance "
             f"{s.get('guidance')}; {record.get('device')}, {record.get('dtype')}. Metrics against the full model's "
             "image of the same prompt and seed (means; PSNR over the images that differ); time: the transformer's "
             "median ms per warm step; measured speedup: the full model's time per step over the plan's, median.", "",
             "| plan | block executions | predicted | measured | ms/step | PSNR dB | SSIM | MAD | all-correct | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in record["summary"]:
        lines.append(f"| {p['plan']} | {_count(p['block_executions'])} | {_cell(p['predicted_speedup'], '.2f')}× | "
                     f"{_cell(p['measured_speedup'], '.2f')}× | {_cell(p['ms_per_step'], '.1f')} | "
                     f"{'identical' if p['images'] and p['identical'] == p['images'] else _cell(p['psnr'], '.1f')} | "
                     f"{_cell(p['ssim'], '.3f')} | {_cell(p['mad'], '.1f')} | "
                     f"{_cell(None if p['all_correct'] is None else 100 * p['all_correct'], '.0f')}"
                     f"{'' if p['all_correct'] is None else '%'} | {p['errors']} |")
    return "\n".join(lines) + "\n"


def results_sheet(folder: Path, labels: list[str], rows: list[dict[str, Any]], prompts: list[str], seeds: list[int],
                  settings: Settings, cell: int = 128) -> Image.Image:
    """The contact sheet of a study or sweep: `rows` (for each prompt and seed in turn, one per plan, in
    `labels` order) as a grid, plans down and prompts (x seeds) across, each image read from `folder`
    (grey where a plan failed), drawn about `cell` pixels wide, at most 256; the toy scorer's reading as
    the corner marks when there is one."""
    from dit_explore.engine.sheet import contact_sheet

    blank = Image.new("RGB", (settings.width, settings.height), (60, 60, 60))
    columns = [(p, s) for p in range(len(prompts)) for s in seeds]
    side = max(settings.width, settings.height)

    def image_of(row: dict[str, Any]) -> Image.Image:
        if not row.get("image") or not (folder / row["image"]).is_file():
            return blank
        with Image.open(folder / row["image"]) as found:
            image = found.convert("RGB")
        return image if side <= 256 else image.resize((max(1, image.width * 256 // side),
                                                       max(1, image.height * 256 // side)))

    per = len(labels)
    grid = [[image_of(rows[c * per + r]) for c in range(len(columns))] for r in range(per)]
    marks = [[rows[c * per + r].get("all_correct") for c in range(len(columns))] for r in range(per)]
    has_marks = any(m is not None for line in marks for m in line)
    return contact_sheet(grid, labels, [prompts[p] if len(seeds) == 1 else f"{prompts[p]} · seed {s}" for p, s in columns],
                         scale=max(1, cell // min(side, 256)), marks=marks if has_marks else (),
                         footer="corner: green = the scorer reads every attribute of the caption back, red = not"
                         if has_marks else "")
