"""`dit-explore sweep MODEL KIND --out DIR`: a family of plans, each against the full model, as a table and a plot.

Kinds (the plans they make; "the middle group" is the largest middle group of the model's similarity
analysis, its shipped or cached one, else measured; a model without one takes the middle half of its
largest stack):

- `skip-each`: leave one block out, every block of every stack (x = the block, one line per stack);
- `skip-middle-n`: remove n blocks centred in the middle group, n = 0 .. its size (x = n);
- `repeat-middle-n`: replace the n centred blocks by the group's centre block run n times (x = n);
- `parallel-width`: the w centred blocks as one parallel group, w = 2 .. the group's size, looped once and
  three times (x = w, one line per loop count);
- `step-window`: a plan (`--plan FILE`, default: skip the whole middle group) active only on a window of
  `--window` steps (default a quarter of the steps), every window in turn, and on every step (x = the
  window's first step).

Each plan runs on every prompt and seed through `study.measure_item` (the one generation path), measured
against the full model's image of the same prompt and seed (PSNR, MAD, SSIM, MS-SSIM; the shapes scorer
for toy captions). DIR holds `sweep.json` (what this sweep is), `items.jsonl` (one line per finished item,
appended and synced as it finishes: an interrupted sweep loses at most the item it was on), `images/`, and
at the end `results.json`, `results.csv`, `plot.png` (the metric against x, one line per series, the full
model as reference) and, up to 60 plans, `contact_sheet.png`. `--resume` continues a sweep in DIR: items
are keyed by model, revision, dtype, plan, prompt, seed and settings, so nothing runs twice. A plan that
cannot run (refused by the model's layout, non-finite latents, out of memory) is recorded with its error
and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from dit_explore.engine import headless
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import analysis_prompts, default_prompt, is_toy
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.resolve import ModelError, ModelSource
from dit_explore.engine.core.sampling import Settings, resolve_settings
from dit_explore.engine.core.text import shown
from dit_explore.engine.study import (
    FULL,
    RESULTS_CSV,
    RESULTS_JSON,
    StudyPlan,
    check_seeds,
    measure_item,
    results_sheet,
    summarize,
    to_csv,
)

KINDS = ("skip-each", "skip-middle-n", "repeat-middle-n", "parallel-width", "step-window")
SWEEP_JSON = "sweep.json"
ITEMS = "items.jsonl"
PLOT = "plot.png"
CONTACT_SHEET = "contact_sheet.png"
SHEET_MAX_PLANS = 60


@dataclass(frozen=True)
class SweepItem:
    label: str
    series: str  # one line of the plot
    x: int | None  # None: not on the x axis (step-window's every-step reference)
    plan: plans.Plan


def largest_middle(layout: Layout, groups: dict[str, list[tuple[int, int]]] | None) -> tuple[str, int, int]:
    """The largest middle group (stack, first, last) of an analysis; ties go to the larger stack. Without
    an analysis, or one with no middle group, the middle half of the largest stack."""
    from dit_explore.engine.core.similarity import group_names

    best: tuple[tuple[int, int], str, int, int] | None = None
    for name, found in (groups or {}).items():
        for (a, b), label in zip(found, group_names(len(found))):
            if label in ("first", "last"):
                continue
            key = (b - a + 1, layout.stack(name).blocks)
            if best is None or key > best[0]:
                best = (key, name, a, b)
    if best is not None:
        return best[1], best[2], best[3]
    stack = max(layout.stacks, key=lambda s: s.blocks)
    quarter = stack.blocks // 4
    return stack.name, quarter, stack.blocks - 1 - quarter


def _with(stack: str, n: int, head_end: int, middle: list[plans.Unit], tail_start: int, name: str) -> plans.Plan:
    order: list[plans.Unit] = [*range(head_end), *middle, *range(tail_start, n)]
    return plans.Plan(name=name).with_order(stack, tuple(order))


def sweep_items(kind: str, layout: Layout, middle: tuple[str, int, int], steps: int, window: int,
                base: plans.Plan | None) -> list[SweepItem]:
    """The plans of a sweep kind (see the module), in order."""
    stack, a, b = middle
    n = layout.stack(stack).blocks
    size = b - a + 1
    items: list[SweepItem] = []
    if kind == "skip-each":
        for s in layout.stacks:
            for k in range(s.blocks):
                items.append(SweepItem(f"{s.name}: skip {k}", s.name, k,
                                       _with(s.name, s.blocks, k, [], k + 1, f"{s.name}: skip {k}")))
    elif kind == "skip-middle-n":
        for m in range(size + 1):
            start = a + (size - m) // 2
            label = f"{stack}: skip {plans.span_text(start, start + m - 1)}" if m else f"{stack}: skip none"
            plan = _with(stack, n, start, [], start + m, label) if m else plans.Plan(name=label)
            items.append(SweepItem(label, stack, m, plan))
    elif kind == "repeat-middle-n":
        centre = (a + b) // 2
        for m in range(1, size + 1):
            start = a + (size - m) // 2
            label = f"{stack}: {centre}x{m} in place of {plans.span_text(start, start + m - 1)}"
            items.append(SweepItem(label, stack, m, _with(stack, n, start, [centre] * m, start + m, label)))
    elif kind == "parallel-width":
        for loops in (1, 3):
            for w in range(2, size + 1):
                start = a + (size - w) // 2
                label = f"{stack}: parallel {plans.span_text(start, start + w - 1)} x{loops}"
                group = plans.Group(tuple(range(start, start + w)), loops)
                items.append(SweepItem(label, f"looped x{loops}", w, _with(stack, n, start, [group], start + w, label)))
    elif kind == "step-window":
        plan = base if base is not None else _with(stack, n, a, [], b + 1, f"{stack}: skip {plans.span_text(a, b)}")
        name = plan.name or "plan"
        items.append(SweepItem(f"{name}, every step", "every step", None, replace(plan, active_steps=None)))
        for start in range(0, steps, window):
            active = tuple(range(start, min(start + window, steps)))
            label = f"{name}, steps {plans.span_text(active[0], active[-1])}"
            items.append(SweepItem(label, name, start, replace(plan, name=label, active_steps=active)))
    else:
        raise ValueError(f"unknown sweep kind {kind!r}")
    return items


def item_key(model: str, revision: str, dtype: str, plan: plans.Plan, prompt: str, seed: int,
             settings: Settings) -> str:
    """What makes an item the same item: a finished one with this key is never run again."""
    text = json.dumps({"model": model, "revision": revision, "dtype": dtype, "plan": plans.dumps(replace(plan, name=None)),
                       "prompt": prompt, "seed": seed, "settings": replace(settings, seed=seed).to_json()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_items(path: Path) -> dict[str, dict[str, Any]]:
    """The finished items of an earlier run, by key; a line cut short by an interruption is ignored."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            done[row["key"]] = row
    return done


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _precheck(out: Path, resume: bool, overwrite: bool, known: dict[str, Any]) -> None:
    """Before anything loads: --out must be new, or hold a sweep that --overwrite may empty, or one that
    --resume may continue (the same model, kind, dtype and settings); anything else is one line."""
    s = shown(out)
    if out.exists() and not out.is_dir():
        raise headless.UsageError(f"--out {s}: exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return
    earlier = out / SWEEP_JSON
    if not earlier.is_file():
        raise headless.UsageError(f"--out {s}: exists, is not empty and holds no sweep ({SWEEP_JSON})")
    if overwrite:
        return
    if not resume:
        raise headless.UsageError(f"--out {s}: already holds a sweep; --resume continues it, --overwrite starts afresh")
    try:
        before = json.loads(earlier.read_text(encoding="utf-8"))
    except ValueError:
        raise headless.UsageError(f"--out {s}: {SWEEP_JSON} is not JSON; --overwrite starts afresh") from None
    for field, value in known.items():
        if not isinstance(before, dict) or before.get(field) != value:
            theirs = before.get(field) if isinstance(before, dict) else None
            raise headless.UsageError(f"--out {s}: a sweep with {field} {theirs!r}, not {value!r}; choose another "
                                      "--out, or --overwrite")


def _claim(req: headless.SweepRequest, meta: dict[str, Any]) -> None:
    """After loading: the revision must match too (resume); then --out is made ours and sweep.json written."""
    from dit_explore.engine.core.runs import write_atomic

    out, earlier = req.out, req.out / SWEEP_JSON
    if earlier.is_file() and req.overwrite:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    elif earlier.is_file():
        before = json.loads(earlier.read_text(encoding="utf-8"))
        if before.get("revision") != meta["revision"]:
            raise headless.UsageError(f"--out {shown(out)}: a sweep of revision {before.get('revision')!r} of "
                                      f"{meta['model']}, this is {meta['revision']!r}; choose another --out, or --overwrite")
    (out / "images").mkdir(parents=True, exist_ok=True)
    write_atomic(earlier, (json.dumps(meta, indent=1) + "\n").encode())


def sweep(req: headless.SweepRequest) -> int:
    """Check, load, make the plans, run what is not done yet, write the results (see the module)."""
    from dit_explore.engine.core.similarity import DEFAULT_PROMPTS

    if req.kind not in KINDS:
        raise headless.UsageError(f"unknown sweep kind {req.kind!r}: one of {', '.join(KINDS)}")
    source, cli = headless.model_and_sampling(req.model, req.sampling)
    if req.plan_file is not None and req.kind != "step-window":
        raise headless.UsageError(f"--plan is for step-window sweeps, not {req.kind}")
    base = headless.load_plan_for(source, req.plan_file) if req.plan_file else None
    prompts = (headless.read_prompts(list(req.prompts), req.prompts_file, None) if req.prompts or req.prompts_file
               else [default_prompt(source.name)])
    seeds = check_seeds(req.seeds, req.sampling.seed)
    settings = resolve_settings(source.defaults, cli)
    window = req.window if req.window is not None else max(1, settings.steps // 4)
    if not 1 <= window <= settings.steps:
        raise headless.UsageError(f"--window {window}: must be between 1 and the {settings.steps} steps")
    try:
        source.check_size(settings.width, settings.height)
    except ModelError as exc:
        raise headless.UsageError(str(exc)) from None
    from dit_explore.engine.generate import Generator, dtype_name
    from dit_explore.engine.models import pick_device, pick_dtype

    try:
        dtype = dtype_name(pick_dtype(req.options.dtype, pick_device(req.options.device)))
    except ModelError as exc:
        raise headless.UsageError(str(exc)) from None
    saved_settings = replace(settings, seed=0).to_json()
    _precheck(req.out, req.resume, req.overwrite, {"model": source.name, "kind": req.kind, "dtype": dtype,
                                                   "settings": saved_settings})
    headless.check_memory(source, settings, req.options)
    loaded = headless._load(source, req.options)

    generator = Generator(loaded, on_warning=lambda message: headless._say(f"warning: {message}"))
    middle = None
    if req.kind != "skip-each" and not (req.kind == "step-window" and base is not None):
        from dit_explore.engine.analysis import cached_analysis

        headless._say("finding the middle group (the similarity analysis: shipped, cached or measured)…")
        # The model's standard analysis (its default settings: a toy's shipped one), whatever this sweep's steps.
        result, _ = cached_analysis(generator, list(analysis_prompts(source.name, DEFAULT_PROMPTS)),
                                    resolve_settings(source.defaults))
        middle = largest_middle(source.layout, {n: list(s.groups) for n, s in result.stacks.items()})
    items = sweep_items(req.kind, source.layout, middle or largest_middle(source.layout, None), settings.steps,
                        window, base)
    meta = {"model": source.name, "revision": loaded.revision, "kind": req.kind, "dtype": dtype_name(loaded.dtype),
            "device": str(loaded.device), "settings": saved_settings, "prompts": prompts,
            "seeds": seeds, "middle_group": list(middle) if middle else None, "window": window,
            "plans": [{"label": i.label, "series": i.series, "x": i.x, "text": plans.dumps(i.plan)} for i in items]}
    _claim(req, meta)
    return _run(req, source, generator, items, prompts, seeds, settings, meta)


def _run(req: headless.SweepRequest, source: ModelSource, generator: Any, items: list[SweepItem], prompts: list[str],
         seeds: list[int], settings: Settings, meta: dict[str, Any]) -> int:
    import torch

    out = req.out
    done = read_items(out / ITEMS)
    toy = is_toy(source.name)
    every = [SweepItem(FULL, FULL, None, plans.Plan()), *items]
    rows: list[dict[str, Any]] = []
    started, ran = time.perf_counter(), 0
    columns = [(p, s) for p in range(len(prompts)) for s in seeds]
    for c, (p, seed) in enumerate(columns):
        prompt = prompts[p]
        full: tuple[Image.Image, float] | None = None
        for r, item in enumerate(every):
            key = item_key(source.name, meta["revision"], meta["dtype"], item.plan, prompt, seed, settings)
            row = done.get(key)
            if row is None:
                try:
                    plans.validate(item.plan, source.layout, source=item.label)
                    plans.validate_steps(item.plan, settings.steps, source=item.label)
                except plans.PlanError as exc:  # e.g. SD3's context-pre-only last block cannot be left out
                    row = {"plan": item.label, "prompt": prompt, "seed": seed, "error": str(exc).splitlines()[0]}
                else:
                    try:
                        row, _ = measure_item(generator, StudyPlan(item.label, None, item.plan), prompt, seed, settings,
                                              full, out, f"images/{key}.png", toy, is_full=r == 0)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        row = {"plan": item.label, "prompt": prompt, "seed": seed, "error": "out of memory"}
                    except OSError as exc:
                        raise headless.UsageError(
                            f"--out {shown(out)}: cannot write: {exc.strerror or exc}; the {len(done) + ran} items "
                            f"finished are kept, --resume continues") from None
                row.update({"key": key, "series": item.series, "x": item.x})
                try:
                    _append(out / ITEMS, row)
                except OSError as exc:
                    raise headless.UsageError(
                        f"--out {shown(out)}: cannot write {ITEMS}: {exc.strerror or exc}; the items finished before "
                        "are kept, --resume continues") from None
                ran += 1
                if row.get("error"):
                    headless._say(f"{item.label}: {row['error']}")
            if r == 0:
                full = _full_of(out, row)
            rows.append(row)
        headless._say(f"[{c + 1}/{len(columns)}] {len(every)} plans  {prompt!r} seed {seed}  "
                      f"({ran} run, {len(rows) - ran} kept from before; "
                      f"{time.perf_counter() - started:.1f} s)")
    _finish(out, meta, every, rows, prompts, seeds, settings, toy)
    headless._say(f"wrote {shown(out)}/ ({RESULTS_CSV}, {RESULTS_JSON}, {PLOT}"
                  f"{', ' + CONTACT_SHEET if len(every) <= SHEET_MAX_PLANS else ''}): {len(rows)} items, {ran} run now, "
                  f"{len(rows) - ran} from before, {sum(1 for r in rows if r.get('error'))} failed")
    return 0


def _full_of(out: Path, row: dict[str, Any]) -> tuple[Image.Image, float] | None:
    """The full model's image and ms per step of a finished row (from disk when it was resumed)."""
    if row.get("error") or not row.get("image"):
        return None
    try:
        with Image.open(out / row["image"]) as image:
            return image.convert("RGB"), float(row["ms_per_step"])
    except OSError:
        return None


def _finish(out: Path, meta: dict[str, Any], every: list[SweepItem], rows: list[dict[str, Any]], prompts: list[str],
            seeds: list[int], settings: Settings, toy: bool) -> None:
    from dit_explore.engine.core.runs import write_atomic

    record = {**meta, "rows": rows, "summary": summarize(rows, [i.label for i in every])}
    try:
        write_atomic(out / RESULTS_JSON, (json.dumps(record, indent=1) + "\n").encode())
        write_atomic(out / RESULTS_CSV, to_csv(rows).encode())
        write_atomic(out / PLOT, plot(meta["kind"], every, record["summary"], toy))
        if len(every) <= SHEET_MAX_PLANS:
            sheet = results_sheet(out, [i.label for i in every], rows, prompts, seeds, settings, cell=96)
            write_atomic(out / CONTACT_SHEET, _png(sheet))
    except OSError as exc:
        raise headless.UsageError(f"--out {shown(out)}: cannot write the results: {exc.strerror or exc}; every item "
                                  f"is kept in {ITEMS}, --resume writes them") from None


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def plot(kind: str, every: list[SweepItem], summary: list[dict[str, Any]], toy: bool) -> bytes:
    """The metric (mean SSIM; for the toys also all-correct) against x, one line per series, the full
    model as a dashed reference; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    by_label = {s["plan"]: s for s in summary}
    panels = [("ssim", "SSIM against the full model")] + ([("all_correct", "all attributes correct")] if toy else
                                                          [("psnr", "PSNR against the full model (dB)")])
    figure, axes = pyplot.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    xlabel = {"skip-each": "block left out", "skip-middle-n": "middle blocks removed (n)",
              "repeat-middle-n": "middle blocks replaced by the centre block (n)",
              "parallel-width": "parallel group width (w)", "step-window": "first step of the window"}[kind]
    series = list(dict.fromkeys(i.series for i in every[1:] if i.x is not None))
    for axis, (metric, title) in zip(axes[0], panels):
        for name in series:
            points = [(i.x, by_label[i.label][metric]) for i in every[1:]
                      if i.series == name and i.x is not None and by_label[i.label][metric] is not None]
            if points:
                axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        full = by_label[FULL][metric]
        if full is not None:
            axis.axhline(full, color="grey", linestyle="--", label="full model")
        for item in every[1:]:
            value = by_label[item.label][metric]
            if item.x is None and value is not None:
                axis.axhline(value, color="tab:red", linestyle=":", label=item.label)
        if metric in ("ssim", "all_correct"):
            axis.set_ylim(min(0.0, axis.get_ylim()[0]), 1.05)
        axis.set_xlabel(xlabel)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"dit-explore sweep {kind}", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    return buffer.getvalue()
