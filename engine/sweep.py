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
against the full model's image of the same prompt and seed (PSNR, MAD, SSIM, MS-SSIM, HaarPSI and FSIM
with piq; the shapes scorer for toy captions). DIR holds `sweep.json` (what this sweep is), `items.jsonl`
(one line per finished item, appended and synced as it finishes: an interrupted sweep loses at most the
item it was on), `images/`, and at the end `results.json`, `results.csv` (the series and x first, the batch
last), `plot.png` (the metric against x, one line per series, the full model as reference) and, up to 60
plans, `contact_sheet.png`. `--resume` continues a sweep in DIR: items
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
from concurrent.futures import Future, ThreadPoolExecutor
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
    CSV_FIELDS,
    FULL,
    RESULTS_CSV,
    RESULTS_JSON,
    check_seeds,
    image_rows,
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
REQUEST_JSON = "sweep-request.json"  # engine/sweep_ranks.py's
MAX_BATCH = 16
# results.csv: the study's columns, after the sweep's own axis (which series, which x) and before the batch.
SWEEP_CSV_FIELDS = ("series", "x", *CSV_FIELDS, "batch")


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


def _windowed(branch: plans.Branch | None, active: tuple[int, ...]) -> plans.Branch | None:
    """A guidance branch of a step-window plan, on the window's steps only (None: none of them)."""
    if branch is None:
        return None
    steps = tuple(step for step in active if branch.applies_at(step))
    return replace(branch, steps=steps) if steps else None


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
            items.append(SweepItem(label, name, start, replace(plan, name=label, active_steps=active,
                                                               uncond=_windowed(plan.uncond, active),
                                                               extra=_windowed(plan.extra, active))))
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


def read_items_in(out: Path) -> dict[str, dict[str, Any]]:
    """The finished items in a sweep folder: items.jsonl and, of a multi-GPU sweep, each process's
    items.rank<N>.jsonl."""
    done: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("items*.jsonl")):
        done.update(read_items(path))
    return done


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


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def _precheck(out: Path, resume: bool, overwrite: bool, known: dict[str, Any]) -> None:
    """Before anything loads: --out must be new, or hold a sweep that --overwrite may empty, or one that
    --resume may continue (the same model, kind, dtype and settings); anything else is one line."""
    s = shown(out)
    if out.exists() and not out.is_dir():
        raise headless.UsageError(f"--out {s}: exists and is not a directory")
    if not (out.is_dir() and any(p.name != REQUEST_JSON for p in out.iterdir())):
        return  # new, empty, or holding only the request of a multi-process sweep that never started
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


def overlaps(device: Any) -> bool:
    """Whether a sweep on `device` records a batch while the next generates: on a GPU, yes (the GPU
    would wait for the CPU otherwise); on a CPU, no (both would compete for the same cores)."""
    return getattr(device, "type", "cpu") != "cpu"


@dataclass(frozen=True)
class Batch:
    """One job of a sweep: a plan (its index in the sweep's plans, 0 = the full model) on some of the
    sweep's columns (prompt x seed), generated as one batch."""

    plan: int
    columns: tuple[int, ...]
    cost: float  # predicted: block executions of one image (its steps included) x images


def form_batches(todo: dict[int, list[int]], size: int, executions: list[float]) -> list[Batch]:
    """The jobs of the columns still to do (`todo`: plan -> columns), `size` columns at most, in plan then
    column order: a function of the job list alone (never of the number of processes)."""
    return [Batch(plan, tuple(columns[i:i + size]), executions[plan] * len(columns[i:i + size]))
            for plan, columns in sorted(todo.items()) for i in range(0, len(columns), size)]


def split_by_cost(batches: list[Batch], ranks: int) -> list[list[Batch]]:
    """Whole batches to `ranks` processes by predicted cost (longest first, each to the least loaded; ties
    to the lower rank), so that mixed plans finish together; each rank's share back in job order."""
    loads = [0.0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(batches)), key=lambda i: (-batches[i].cost, i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        loads[rank] += batches[index].cost
        shares[rank].append(index)
    return [[batches[i] for i in sorted(share)] for share in shares]


def choose_batch(source: ModelSource, settings: Settings, loaded: Any, columns: int, requested: int | None) -> int:
    """Images per batch: `requested` (`--batch`), else as many columns as fit, at most MAX_BATCH: the
    denoising memory of one image (engine/core/memory.py's estimate) into what the device has beside the
    loaded model (a CUDA device's total memory less what the process holds, so that every GPU of a kind
    decides alike; the CPU's available memory), with a fifth kept spare."""
    if requested is not None:
        return max(1, min(requested, columns))
    from dit_explore.engine.core.memory import available_memory, estimate
    from dit_explore.engine.generate import dtype_name

    device = loaded.device
    kind = "cuda" if device.type == "cuda" else "cpu"
    one = estimate(source, settings.width, settings.height, guidance=settings.guidance, dtype=dtype_name(loaded.dtype),
                   device_kind=kind, max_sequence_length=settings.max_sequence_length,
                   random_weights=loaded.random_weights)
    per_image = max(1, one.phases.get("denoising", one.working))
    if kind == "cuda":
        import torch

        room = torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_allocated(device)
    else:
        room = available_memory() or 0
    fits = int((room * 0.8 - (one.working - per_image)) // per_image)
    return max(1, min(MAX_BATCH, columns, fits))


@dataclass
class Sweep:
    """A sweep being run: what it is and where it goes (see the module)."""

    out: Path
    source: ModelSource
    generator: Any
    items: list[SweepItem]  # the plans; `every` puts the full model before them
    columns: list[tuple[str, int]]  # (prompt, seed)
    settings: Settings
    meta: dict[str, Any]
    batch: int
    check: Any = None  # raises to cancel (between block executions)
    on_progress: Any = None  # (items done, items in all, what was last done)
    items_file: str = ITEMS
    overlap: bool | None = None  # record a batch while the next generates (default: on a GPU, not on a CPU)

    def __post_init__(self) -> None:
        from dit_explore.engine.core.sampling import block_runs

        self.every = [SweepItem(FULL, FULL, None, plans.Plan()), *self.items]
        self.toy = is_toy(self.source.name)
        revision, dtype, source = self.meta["revision"], self.meta["dtype"], self.source
        self.keys = [[item_key(source.name, revision, dtype, item.plan, prompt, seed, self.settings)
                      for prompt, seed in self.columns] for item in self.every]
        self.executions = [block_runs(item.plan, source.layout, self.settings.steps).total for item in self.every]
        self.done = read_items_in(self.out)
        self.before = len({k for line in self.keys for k in line} & set(self.done))  # distinct items done earlier
        self.ran = 0
        self.generate_seconds = 0.0  # inside generate_batch: text (cached), denoising, decode
        self.batch_seconds: list[tuple[int, float]] = []  # (images, wall seconds) of each batch run, in order
        self._valid: dict[int, str | None] = {}
        self._fulls: dict[int, tuple[Image.Image, float] | None] = {}
        self._stream: Any = None  # the recording stream, on a CUDA device
        self._warmed = False

    @property
    def total(self) -> int:
        return len(self.every) * len(self.columns)

    def todo(self, plans_: range | list[int]) -> dict[int, list[int]]:
        """Plan -> the columns whose item has not run (an item with the key of another is run once: a plan
        that is the full model in disguise takes the full model's image)."""
        out: dict[int, list[int]] = {}
        claimed = set(self.done)
        for r in plans_:
            columns = [c for c in range(len(self.columns)) if self.keys[r][c] not in claimed]
            claimed.update(self.keys[r][c] for c in columns)
            if columns:
                out[r] = columns
        return out

    def baselines(self) -> list[Batch]:
        return form_batches(self.todo([0]), self.batch, self.executions)

    def plans(self) -> list[Batch]:
        return form_batches(self.todo(range(1, len(self.every))), self.batch, self.executions)

    def refresh(self) -> None:
        """Read back every process's finished items (after the baselines of a multi-GPU sweep)."""
        self.done = read_items_in(self.out)

    def run_all(self) -> None:
        """Every item not done yet, in this process: the baselines, then the plans."""
        self.run(self.baselines())
        self.run(self.plans())

    def run(self, batches: list[Batch]) -> None:
        """Run `batches` in order. Each batch's images are generated here; writing and measuring them
        (`_record`) overlaps the next batch's generation on the GPU (`overlap`), in one recording thread,
        so that the GPU never waits for PNG encoding, metrics or the items file. Every batch is recorded
        before this returns, also when generating one raises (a cancel): finished items are never lost."""
        overlap = self.overlap if self.overlap is not None else overlaps(self._device())
        if overlap and batches:
            self._warm_metrics()
        pending: tuple[Batch, Future[list[dict[str, Any]]], str | None] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-record") as recorder:
            try:
                for batch in batches:
                    started = time.perf_counter()
                    made = self._generate(batch)
                    if overlap:
                        self._settle(pending)
                        pending = (batch, recorder.submit(self._record, batch, *made), made[1])
                    else:
                        self._after(batch, self._record(batch, *made), made[1])
                    self.batch_seconds.append((len(batch.columns), time.perf_counter() - started))
            except BaseException:
                self._settle(pending, quiet=True)
                raise
            self._settle(pending)

    def _settle(self, pending: tuple[Batch, Future[list[dict[str, Any]]], str | None] | None, *,
                quiet: bool = False) -> None:
        """Wait for a batch's recording (its error, a full disk, is raised here unless `quiet`: another
        error is on its way already)."""
        if pending is None:
            return
        batch, future, error = pending
        try:
            rows = future.result()
        except Exception:
            if quiet:
                return
            raise
        self._after(batch, rows, error)

    def _after(self, batch: Batch, rows: list[dict[str, Any]], error: str | None) -> None:
        if error is not None:
            headless._say(f"{self.every[batch.plan].label}: {error}")
        if self.on_progress is not None:
            self.on_progress(len(self.done), self.total, self.every[batch.plan].label)

    def _device(self) -> Any:
        from dit_explore.engine.study import metrics_device

        return metrics_device(self.generator)

    def _recording(self) -> Any:
        """Where recording runs its GPU work: a stream of its own on a CUDA device, so that the metrics
        neither wait behind the generation queued on the default stream (each of their reads would) nor
        land inside the generation's timed steps; a no-op elsewhere."""
        import contextlib

        import torch

        device = self._device()
        if getattr(device, "type", None) != "cuda":
            return contextlib.nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return torch.cuda.stream(self._stream)

    def _warm_metrics(self) -> None:
        """Compare two images of the sweep's size once before the first batch on a GPU: the metrics' first
        call allocates and plans their FFTs, work that would otherwise stall the batch it overlaps."""
        if self._warmed or getattr(self._device(), "type", None) != "cuda":
            return
        import numpy as np

        from dit_explore.engine.metrics import compare

        noise = np.random.default_rng(0).integers(0, 256, (2, self.settings.height, self.settings.width, 3), np.uint8)
        with self._recording():
            compare(Image.fromarray(noise[0]), Image.fromarray(noise[1]), self._device())
        self._warmed = True

    def _problem(self, r: int) -> str | None:
        if r not in self._valid:
            item = self.every[r]
            try:
                plans.validate(item.plan, self.source.layout, source=item.label)
                plans.validate_steps(item.plan, self.settings.steps, source=item.label)
                plans.validate_guidance(item.plan, self.source.layout, self.settings.guidance, source=item.label)
                self._valid[r] = None
            except plans.PlanError as exc:  # e.g. SD3's context-pre-only last block cannot be left out
                self._valid[r] = str(exc).splitlines()[0]
        return self._valid[r]

    def _full(self, c: int) -> tuple[Image.Image, float] | None:
        if c not in self._fulls:
            row = self.done.get(self.keys[0][c])
            self._fulls[c] = _full_of(self.out, row) if row else None
        return self._fulls[c]

    def _generate(self, batch: Batch) -> tuple[Any, str | None]:
        """The batch's images (None with the reason when its plan cannot run or its run failed)."""
        import torch

        from dit_explore.engine.generate import NonFiniteError

        item = self.every[batch.plan]
        error = self._problem(batch.plan)
        if error is not None:
            return None, error
        try:
            result = self.generator.generate_batch([self.columns[c][0] for c in batch.columns],
                                                   [self.columns[c][1] for c in batch.columns], self.settings,
                                                   item.plan, check=self.check or (lambda: None))
        except NonFiniteError as exc:
            return None, str(exc)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None, f"out of memory (a batch of {len(batch.columns)})"
        self.generate_seconds += result.timing.total
        return result, None

    def _record(self, batch: Batch, result: Any, error: str | None) -> list[dict[str, Any]]:
        """Write and measure the batch's images and append their rows (see `run`), GPU work on the recording
        stream (`_recording`)."""
        with self._recording():
            return self._record_rows(batch, result, error)

    def _record_rows(self, batch: Batch, result: Any, error: str | None) -> list[dict[str, Any]]:
        item = self.every[batch.plan]
        rows: list[dict[str, Any]] = []
        for c in batch.columns:
            rows.append({"plan": item.label, "plan_file": None, "prompt": self.columns[c][0],
                         "seed": self.columns[c][1], "error": error, "batch": len(batch.columns)})
        if error is None:
            timing = result.timing
            step = timing.warm_step or timing.transformer_total / max(len(timing.transformer_steps), 1)
            try:
                image_rows(rows, result.images, self.out, [f"images/{self.keys[batch.plan][c]}.png" for c in batch.columns],
                           step * 1000 / len(batch.columns), result.block_runs,
                           [None if batch.plan == 0 else self._full(c) for c in batch.columns], self.toy,
                           is_full=batch.plan == 0, device=self._device())
            except OSError as exc:
                raise headless.UsageError(
                    f"--out {shown(self.out)}: cannot write: {exc.strerror or exc}; the {len(self.done)} items "
                    "finished are kept, --resume continues") from None
            if batch.plan == 0:
                for i, c in enumerate(batch.columns):
                    self._fulls[c] = (result.images[i], rows[i]["ms_per_step"])
        for row, c in zip(rows, batch.columns):
            row.update({"key": self.keys[batch.plan][c], "series": item.series, "x": item.x})
        try:
            _append(self.out / self.items_file, rows)
        except OSError as exc:
            raise headless.UsageError(
                f"--out {shown(self.out)}: cannot write {self.items_file}: {exc.strerror or exc}; the items "
                "finished before are kept, --resume continues") from None
        for row in rows:
            self.done[row["key"]] = row
        self.ran += len(rows)
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """Every item's row, for each column in turn the plans in order (what the results and the sheet
        read); None where an item has not run."""
        out = []
        for c in range(len(self.columns)):
            for r, item in enumerate(self.every):
                row = self.done[self.keys[r][c]]
                if row.get("plan") != item.label:  # another plan's item with the same key (the same blocks)
                    row = {**row, "plan": item.label, "series": item.series, "x": item.x}
                out.append(row)
        return out

    def finish(self) -> None:
        prompts = list(dict.fromkeys(p for p, _ in self.columns))
        seeds = list(dict.fromkeys(s for _, s in self.columns))
        _finish(self.out, self.meta, self.every, self.rows(), prompts, seeds, self.settings, self.toy)


def _prepare(req: headless.SweepRequest) -> tuple[ModelSource, Settings, list[str], list[int], int, Any, str]:
    """Everything checked before the model loads: the source, settings, prompts, seeds, window, the
    step-window's plan and the dtype's name."""
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
    if req.gpus is not None and not 1 <= req.gpus <= 64:
        raise headless.UsageError(f"--gpus {req.gpus}: must be between 1 and 64")
    if req.batch is not None and not 1 <= req.batch <= MAX_BATCH:
        raise headless.UsageError(f"--batch {req.batch}: must be between 1 and {MAX_BATCH}")
    try:
        source.check_size(settings.width, settings.height)
    except ModelError as exc:
        raise headless.UsageError(str(exc)) from None
    from dit_explore.engine.generate import dtype_name
    from dit_explore.engine.models import pick_device, pick_dtype

    try:
        dtype = dtype_name(pick_dtype(req.options.dtype, pick_device(req.options.device)))
        dtype += f"+{req.options.quantize}" if req.options.quantize else ""  # as Loaded.precision names it
    except ModelError as exc:
        raise headless.UsageError(str(exc)) from None
    return source, settings, prompts, seeds, window, base, dtype


def plan_sweep(kind: str, generator: Any, source: ModelSource, settings: Settings, window: int, base: Any,
               prompts: list[str], seeds: list[int]) -> tuple[list[SweepItem], dict[str, Any]]:
    """The plans of KIND for the loaded model (the middle group from its similarity analysis when the kind
    needs it) and the sweep's record (sweep.json)."""
    from dit_explore.engine.core.similarity import DEFAULT_PROMPTS

    loaded = generator.loaded
    middle = None
    if kind != "skip-each" and not (kind == "step-window" and base is not None):
        from dit_explore.engine.analysis import cached_analysis

        headless._say("finding the middle group (the similarity analysis: shipped, cached or measured)…")
        # The model's standard analysis (its default settings: a toy's shipped one), whatever this sweep's steps.
        result, _ = cached_analysis(generator, list(analysis_prompts(source.name, DEFAULT_PROMPTS)),
                                    resolve_settings(source.defaults))
        middle = largest_middle(source.layout, {n: list(s.groups) for n, s in result.stacks.items()})
    items = sweep_items(kind, source.layout, middle or largest_middle(source.layout, None), settings.steps, window, base)
    meta = {"model": source.name, "revision": loaded.revision, "kind": kind, "dtype": loaded.precision,
            "device": str(loaded.device), "placement": loaded.offloaded or "full",
            "settings": replace(settings, seed=0).to_json(), "prompts": prompts,
            "seeds": seeds, "middle_group": list(middle) if middle else None, "window": window,
            "plans": [{"label": i.label, "series": i.series, "x": i.x, "text": plans.dumps(i.plan)} for i in items]}
    return items, meta


def sweep(req: headless.SweepRequest) -> int:
    """Check, load, make the plans, run what is not done yet, write the results (see the module); with
    `--gpus N`, the same over N processes (engine/sweep_ranks.py)."""
    source, settings, prompts, seeds, window, base, dtype = _prepare(req)
    _precheck(req.out, req.resume, req.overwrite, {"model": source.name, "kind": req.kind, "dtype": dtype,
                                                   "settings": replace(settings, seed=0).to_json()})
    placement = headless.check_memory(source, settings, req.options)
    if req.gpus is not None:
        from dit_explore.engine.sweep_ranks import launch

        return launch(req)
    from dit_explore.engine.generate import Generator

    loaded = headless._load(source, req.options, placement)
    generator = Generator(loaded, on_warning=lambda message: headless._say(f"warning: {message}"))
    items, meta = plan_sweep(req.kind, generator, source, settings, window, base, prompts, seeds)
    columns = [(p, s) for p in prompts for s in seeds]
    batch = choose_batch(source, settings, loaded, len(columns), req.batch)
    meta["batch"] = batch
    _claim(req, meta)
    job = Sweep(req.out, source, generator, items, columns, settings, meta, batch)
    started = time.perf_counter()

    def progress(done: int, total: int, label: str) -> None:
        headless._say(f"[{done}/{total}] {label}  ({time.perf_counter() - started:.1f} s)")

    job.on_progress = progress
    headless._say(f"{len(job.every)} plans x {len(columns)} prompt/seed columns, batches of {batch}")
    job.run_all()
    return _report(job)


def _report(job: Sweep, ran: int | None = None) -> int:
    """Write the results and say what was done (`ran`: items run now by every process; default this one's)."""
    job.finish()
    rows = job.rows()
    distinct = len({k for line in job.keys for k in line})
    now = job.ran if ran is None else ran
    headless._say(f"wrote {shown(job.out)}/ ({RESULTS_CSV}, {RESULTS_JSON}, {PLOT}"
                  f"{', ' + CONTACT_SHEET if len(job.every) <= SHEET_MAX_PLANS else ''}): {len(rows)} items"
                  f"{f' ({distinct} distinct)' if distinct < len(rows) else ''}, {now} run now, {job.before} from before, "
                  f"{sum(1 for r in rows if r.get('error'))} failed; batches of {job.batch}")
    return 0


def in_engine(generator: Any, kind: str, prompt: str, seed: int, settings: Settings, out: Path, *,
              check: Any = None, on_progress: Any = None) -> Path:
    """A sweep of KIND on one prompt and seed with the engine's loaded model (the explorer's sweeps):
    the same folder as `dit-explore sweep` writes, into `out` (new or empty). `check` raises to cancel
    (the items finished stay in OUT/items.jsonl; `dit-explore sweep --resume` can continue them);
    `on_progress(done, total, label)` after each batch. Returns `out`."""
    from dit_explore.engine.core.runs import write_atomic

    if kind not in KINDS:
        raise ValueError(f"unknown sweep kind {kind!r}: one of {', '.join(KINDS)}")
    source = generator.loaded.source
    window = max(1, settings.steps // 4)
    items, meta = plan_sweep(kind, generator, source, settings, window, None, [prompt], [seed])
    meta["batch"] = 1
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{shown(out)}: not empty")
    (out / "images").mkdir(parents=True, exist_ok=True)
    write_atomic(out / SWEEP_JSON, (json.dumps(meta, indent=1) + "\n").encode())
    job = Sweep(out, source, generator, items, [(prompt, seed)],
                settings, meta, 1, check=check, on_progress=on_progress)
    job.run_all()
    job.finish()
    return out


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
        write_atomic(out / RESULTS_CSV, to_csv(rows, SWEEP_CSV_FIELDS).encode())
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
