"""Headless commands: `dit-explore run` and `dit-explore models`.

Everything that can be checked without the model (plan, prompts, sizes, destination) is checked first,
so bad input costs no model load; every problem is reported as one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS, analysis_prompts, default_prompt, unseen_words
from dit_explore.engine.core.families import all_families
from dit_explore.engine.core.resolve import ModelError, ModelSource, resolve
from dit_explore.engine.core.sampling import Settings, check_prompts, resolve_settings
from dit_explore.engine.core.text import shown

MAX_PROMPTS_BYTES = 1 << 20  # a --prompts file: a thousand prompts of a thousand characters


class UsageError(Exception):
    """Bad input: printed as given (one line per problem), exit code 2."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_prompts(prompts: list[str] | None, prompts_file: str | None, fallback: str | None,
                 model: str = "") -> list[str]:
    out = [p for p in prompts or []]
    if prompts_file is not None:
        from dit_explore.engine.core.userfiles import UserFileError, read_user_text

        path = Path(prompts_file)
        try:
            lines = read_user_text(path, limit=MAX_PROMPTS_BYTES, what=f"--prompts {path}",
                                   kind="prompts files").splitlines()
        except UserFileError as exc:  # missing, not a regular file (a FIFO never blocks), too large, not UTF-8
            raise UsageError(str(exc)) from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise UsageError(f"--prompts {path}: no prompts in it (one prompt per line)")
        out += from_file
    if not out:
        return [fallback or default_prompt(model)]
    try:
        return list(check_prompts(out, "--prompt"))
    except plans.PlanError as exc:
        raise UsageError(str(exc)) from None


def model_and_sampling(model: str, sampling: plans.Sampling) -> tuple[ModelSource, plans.Sampling]:
    """The model a command names and its checked sampling flags, or one line of what is wrong."""
    try:
        return resolve(model), plans.check_sampling(sampling, "--")
    except (plans.PlanError, ModelError) as exc:
        raise UsageError(str(exc)) from None


def load_plan_for(source: ModelSource, plan_path: str | None) -> plans.Plan:
    """The plan to run (identity without --plan), validated against the model's layout."""
    if plan_path is None:
        return plans.Plan()
    try:
        plan = plans.load(plan_path)
        plans.validate(plan, source.layout, source=plan_path)
    except plans.PlanError as exc:
        raise UsageError(str(exc)) from None
    if plan.model is not None and plan.model != source.name:
        _say(f"warning: {plan_path} was written for {plan.model}; running it on {source.name}")
    return plan


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model: --device, --dtype, --random-weights, --compile, --quantize, --memory."""

    device: str = "auto"
    dtype: str | None = None
    random_weights: bool = False
    compile: bool = False
    quantize: str | None = None
    memory: str = "auto"


def _load(source: ModelSource, options: ModelOptions, placement: Any = None) -> Any:
    """The loaded model (engine.models.Loaded), or one line of why not. `placement`: where the weights go
    (`check_memory`'s); None: planned here for an image at the model's default size."""
    from dit_explore.engine.models import load, pick_device, pick_dtype

    if placement is None:
        placement = check_memory(source, resolve_settings(source.defaults), options)
    try:
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device)
        return load(source, device, dtype, random_weights=options.random_weights, compile=options.compile,
                    quantize=options.quantize, placement=placement, on_status=lambda stage, _f: _say(f"{stage}…"))
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def _device_and_dtype(device_name: str, dtype_name: str | None) -> tuple[Any, str]:
    """The torch device of `--device` and the dtype name of `--dtype` there (its default when None); a
    UsageError of one line when the device cannot be used."""
    from dit_explore.engine.models import pick_device, pick_dtype

    try:
        device = pick_device(device_name)
        return device, str(pick_dtype(dtype_name, device)).removeprefix("torch.")
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def check_memory(source: ModelSource, settings: Settings, options: ModelOptions, *, analysis: bool = False,
                 cached_spans: int = 0) -> Any:
    """The memory plan of a request, before anything is loaded (engine/core/placement.py): where the
    weights go (`--memory`, `auto`: the most resident placement that fits), or one line refusing it: on a
    GPU, naming the setting that would fit; on the CPU, what it needs and the largest size that fits
    (engine/core/memory.py). `cached_spans`: the plan's, whose residuals are kept through the run."""
    from dit_explore.engine.core.memory import check_request
    from dit_explore.engine.models import free_memory, plan_memory

    device, dtype = _device_and_dtype(options.device, options.dtype)
    try:
        placement = plan_memory(source, settings, device, dtype, options.memory, random_weights=options.random_weights,
                                quantization=options.quantize, analysis=analysis, cached_spans=cached_spans)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    if device.type == "cpu":  # one memory: the request's own size check, naming the largest size that fits
        available, where = free_memory(device)
        problem = check_request(source, settings.width, settings.height, available, where=where,
                                guidance=settings.guidance, dtype=dtype, device_kind=device.type,
                                max_sequence_length=settings.max_sequence_length,
                                random_weights=options.random_weights, analysis=analysis, cached_spans=cached_spans,
                                quantization=options.quantize)
        if problem is not None:
            raise UsageError(problem)
    return placement


@dataclass(frozen=True)
class RunRequest:
    model: str
    out: Path
    plan: str | None = None
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    sampling: plans.Sampling = plans.Sampling()
    options: ModelOptions = ModelOptions()
    overwrite: bool = False
    cache: str | None = None  # "first-block:T": diffusers' FirstBlockCache (engine/cache_trace.py)
    trace_plan: str | None = None  # where the cache's trace goes, as a static plan


def _check_cache(req: RunRequest, source: ModelSource, prompts: list[str]) -> tuple[str, float] | None:
    """The cache and threshold of `--cache`, after the checks that need no model (one line each)."""
    if req.cache is None:
        if req.trace_plan is not None:
            raise UsageError("--trace-plan needs --cache (it saves what a dynamic cache decided)")
        return None
    from dit_explore.engine.cache_trace import parse_cache, supported

    try:
        cache = parse_cache(req.cache)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    why = supported(source.family, cache[0])
    if why is not None:
        raise UsageError(f"--cache: {source.name} is a {source.family} model; {why}")
    if req.plan is not None:
        raise UsageError("--cache runs the full model under diffusers' cache: it cannot be combined with --plan "
                         "(replay a trace with --plan instead)")
    if req.trace_plan is not None:
        if len(prompts) != 1:
            raise UsageError(f"--trace-plan saves one run's decisions: give one prompt (got {len(prompts)})")
        target = Path(req.trace_plan)
        if target.exists() and not req.overwrite:
            raise UsageError(f"--trace-plan {shown(target)}: exists (choose another name, or --overwrite)")
        if not target.parent.is_dir():
            raise UsageError(f"--trace-plan {shown(target)}: {shown(target.parent)} is not a folder")
    return cache


def run_command(req: RunRequest) -> int:
    from dit_explore.engine.core.runs import RUN_JSON, check_destination

    try:
        source = resolve(req.model)
        plan = load_plan_for(source, req.plan)
        cli = plans.check_sampling(req.sampling, "--")
    except plans.PlanError as exc:
        raise UsageError(str(exc)) from None
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    prompts = read_prompts(list(req.prompts), req.prompts_file, plan.sampling.prompt, source.name)
    for prompt in prompts[:3]:
        unseen = unseen_words(source.name, prompt)
        if unseen is not None:
            _say(f"warning: {unseen}")
    try:
        check_destination(req.out, req.overwrite, RUN_JSON, "run")
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    settings = resolve_settings(source.defaults, plan.sampling, cli)
    try:
        source.check_size(settings.width, settings.height)
        plans.validate_steps(plan, settings.steps, source=req.plan or "plan")
        plans.validate_guidance(plan, source.layout, settings.guidance, source=req.plan or "plan")
    except (plans.PlanError, ModelError) as exc:
        raise UsageError(str(exc)) from None
    cache = _check_cache(req, source, prompts)
    placement = check_memory(source, settings, req.options, cached_spans=len(plans.cache_keys(plan)))
    from dit_explore.engine.core.runs import OutputError, RunWriter

    # The destination is claimed before the model loads: the staging folder (with its owner marker) is
    # made now, so a read-only or full filesystem, a parent that is not a folder, ... is one line, unloaded.
    try:
        writer = RunWriter(req.out, req.overwrite)
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _generate_all(req, source, plan, prompts, settings, writer, cache, placement)
    finally:
        writer.abort()  # nothing once committed or kept elsewhere; else (an error, an interrupt) all of it


def _generate_all(req: RunRequest, source: ModelSource, plan: plans.Plan, prompts: list[str], settings: Settings,
                  writer: Any, cache: tuple[str, float] | None = None, placement: Any = None) -> int:
    """Load, generate every prompt, commit the run; under a diffusers cache when `cache` (its kind and
    threshold, checked by `_check_cache`) is given."""
    from dit_explore.engine.core.protocol import Status, to_json
    from dit_explore.engine.core.runs import OutputError, image_plan
    from dit_explore.engine.core.text import shown
    from dit_explore.engine.generate import Generator, NonFiniteError, run_record

    loaded = _load(source, req.options, placement)
    _say(f"{source.name} ready in {loaded.load_seconds:.1f} s ({loaded.device}, {loaded.precision}); "
         f"{source.layout.describe()}")
    if loaded.offloaded:
        _say(f"memory: {loaded.offloaded}")

    generator = Generator(loaded, on_warning=lambda message: _say(f"warning: {message}"))
    started = time.perf_counter()
    results: list[Any] = []
    traced: dict[str, Any] = {}  # the cache's record and the trace plan, once the run is done

    def record() -> dict[str, Any]:
        out = run_record(loaded, plan, req.plan, prompts, settings)
        out["timing"] = {
            "total": time.perf_counter() - started,
            "load": loaded.load_seconds,
            "text_encode": sum(r.timing.text_encode for r in results),
            "decode": sum(r.timing.decode for r in results),
            "per_image": [to_json(r.timing) for r in results],
        }
        out["block_runs"] = to_json(results[0].block_runs) if results else None
        if traced:
            out["cache"] = traced["record"]
            out["block_runs"] = to_json(traced["runs"])  # what ran, not what the full model would have
        return out

    for i, prompt in enumerate(prompts):
        try:
            if cache is None:
                result = generator.generate(prompt, settings, plan)
            else:
                result = _cached_run(generator, prompt, settings, cache, traced)
        except NonFiniteError as exc:  # a guidance far too large, a float16 overflow: one line
            raise UsageError(str(exc)) from None
        assert result.image is not None  # decoded: generate's default
        name = f"{len(writer.images):03d}.png"
        try:
            writer.add_image(result.image, image_plan(plan, source.name, settings.for_prompt(prompt)),
                             generator.loaded.quantization, generator.loaded.offloaded)
        except OSError as exc:  # a full disk, a folder gone read-only, ...: keep what was written, if it can be
            problem = f"--out {shown(req.out)}: cannot write {name}: {exc.strerror or exc}"
            if not results:
                raise UsageError(f"{problem}; nothing written") from None
            try:
                kept = writer.commit_run({**record(), "error": problem}, status=Status.ERROR)
            except (OSError, OutputError):
                raise UsageError(f"{problem}; nothing kept (the images made before could not be saved either)") \
                    from None
            raise UsageError(f"{problem}; the {len(results)} image{'s' if len(results) != 1 else ''} made before "
                             f"are in {shown(kept)} (run.json says error)") from None
        results.append(result)
        _say(f"[{i + 1}/{len(prompts)}] {result.timing.total:.2f} s  {prompt}")
    try:
        out = writer.commit_run(record())
    except OutputError as exc:  # --out was taken meanwhile: the run is kept beside it, the message says where
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--out {shown(req.out)}: cannot write the run: {exc.strerror or exc}; nothing kept") \
            from None
    _say(f"wrote {shown(req.out if out == writer.out else out)}/ ({len(results)} image{'s' if len(results) != 1 else ''} "
         "and run.json)")
    if req.trace_plan is not None and traced:
        try:
            plans.save(traced["plan"], req.trace_plan, comment=traced["comment"])
        except OSError as exc:
            raise UsageError(f"--trace-plan {shown(req.trace_plan)}: cannot write: {exc.strerror or exc} "
                             f"(the run is in {shown(out)})") from None
        _say(f"wrote {shown(req.trace_plan)} (replay: dit-explore run {source.name} --plan {shown(req.trace_plan)})")
    return 0


def _cached_run(generator: Any, prompt: str, settings: Settings, cache: tuple[str, float],
                traced: dict[str, Any]) -> Any:
    """One image under diffusers' FirstBlockCache or MagCache (after MagCache's calibration run on the same
    prompt and settings), its trace turned into a static plan (engine/cache_trace.py)."""
    from dit_explore.engine.cache_trace import NAMES, first_block_cache, mag_cache, trace_plan
    from dit_explore.engine.core.sampling import block_runs

    kind, threshold = cache
    loaded = generator.loaded
    steps = settings.steps
    extra: dict[str, Any] = {}
    if kind == "first-block":
        with first_block_cache(loaded.transformer, loaded.layout, threshold) as trace:
            result = generator.generate(prompt, settings, plans.Plan(), on_step=trace.on_step)
    else:
        started = time.perf_counter()
        # (MagCache prints its calibrated ratios for copying; the line below says them, and run.json keeps them)
        with mag_cache(loaded.transformer, loaded.layout, threshold, steps, None) as calibration, \
                contextlib.redirect_stdout(io.StringIO()):
            generator.generate(prompt, settings, plans.Plan(), on_step=calibration.on_step, decode=False)
        ratios = calibration.ratios
        _say(f"MagCache calibration: {len(ratios)} magnitude ratios in {time.perf_counter() - started:.1f} s "
             f"({', '.join(f'{r:.3f}' for r in ratios[:6])}{', …' if len(ratios) > 6 else ''})")
        with mag_cache(loaded.transformer, loaded.layout, threshold, steps, ratios) as trace:
            result = generator.generate(prompt, settings, plans.Plan(), on_step=trace.on_step)
        extra = {"calibration_ratios": ratios}
    name = f"{kind} cache {threshold:g} trace"
    skipped_part = "the rest of the model's residual" if kind == "first-block" else "the whole model's residual"
    note = (f"The steps on which diffusers' {NAMES[kind]} (threshold {threshold:g}) ran every block of "
            f"{loaded.source.name}, for {prompt!r} (seed {settings.seed}, {steps} steps, {settings.width}x"
            f"{settings.height}); the others reuse {skipped_part}.")
    plan = trace_plan(loaded.layout, trace.computed, steps, name=name, note=note[:plans.MAX_NOTE],
                      head=kind == "first-block")
    runs = block_runs(plan, loaded.layout, steps)
    skipped = runs.full_total - runs.total
    traced.update(plan=plan, runs=runs, comment="written by dit-explore run --cache --trace-plan", record={
        "kind": kind, "threshold": threshold, "computed_steps": trace.computed,
        "block_executions": runs.total, "skipped_fraction": skipped / runs.full_total, **extra})
    _say(f"{kind} cache {threshold:g}: every block ran on {len(trace.computed)} of {steps} steps; "
         f"{skipped:g} of {runs.full_total} block executions skipped ({skipped / runs.full_total:.1%})")
    return result


def models_command(memory: bool = False, device: str = "auto") -> int:
    """The aliases dit-explore knows, with their stacks; torch-free and instant. With `memory`, what each
    needs on `device` instead (models_memory)."""
    if memory:
        return models_memory(device)
    rows = [("alias", "family", "stacks", "source")]
    for spec in MODELS.values():
        stacks = " + ".join(f"{s.name} {s.blocks}" for s in spec.layout.stacks)
        rows.append((spec.alias, spec.family, stacks, spec.repo or spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    pipelines = ", ".join(f.pipeline_class for f in all_families().values())
    print(f"\nAlso accepted: a Hugging Face repo id or a local diffusers folder of one of: {pipelines}.")
    print("--random-weights builds a real-size alias without downloading it.")
    return 0


def models_memory(device_name: str) -> int:
    """`dit-explore models --memory`: each alias's predicted peak on the device for one image at its default
    size (weights, text encoders included, and the request's working memory; engine/core/memory.py), in the
    device's default dtype and with 8-bit blocks, against what the device has free now. Loads nothing."""
    from dit_explore.engine.core.memory import DEVICE_KINDS, estimate, format_bytes
    from dit_explore.engine.models import free_memory

    device, dtype = _device_and_dtype(device_name, None)
    if device.type not in DEVICE_KINDS:
        raise UsageError(f"--memory: no memory model for {device.type} devices (known: {', '.join(DEVICE_KINDS)})")
    available, where = free_memory(device)

    def cell(need: int) -> str:
        mark = "" if available is None else (" fits" if need <= available else " too big")
        return f"{format_bytes(need)}{mark}"

    from dit_explore.engine.core.placement import PlacementError, plan_placement

    def placed(source: ModelSource, settings: Settings) -> str:
        try:
            return plan_placement(source, settings.width, settings.height, available, device_kind=device.type,
                                  guidance=settings.guidance, dtype=dtype,
                                  max_sequence_length=settings.max_sequence_length).describe()
        except PlacementError:
            return "none fits"

    # Where the weights would live: a GPU's question (on the CPU there is one memory, and only full).
    gpu = device.type == "cuda"
    rows = [("alias", "size", dtype, "8-bit blocks", *(["--memory auto"] if gpu else []))]
    for spec in MODELS.values():
        source = resolve(spec.alias)
        settings = resolve_settings(source.defaults)
        needs = [estimate(source, settings.width, settings.height, guidance=settings.guidance, dtype=dtype,
                          device_kind=device.type, max_sequence_length=settings.max_sequence_length,
                          quantization=kind).total for kind in (None, "int8")]
        rows.append((spec.alias, f"{settings.width}x{settings.height}", cell(needs[0]), cell(needs[1]),
                     *([placed(source, settings)] if gpu else [])))
    free = "unknown" if available is None else format_bytes(available)
    print(f"Predicted peak on {where} ({free} free now), nothing loaded:")
    print("one image at each model's default size, weights and text encoders included.")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip())
    print("8-bit blocks: --quantize int8, fp8-weights, or fp8 where the GPU has FP8 matmuls (the [quantize] extra).")
    if gpu:
        print("--memory auto: where the weights would live (offload and sequential keep some in host memory).")
    return 0


@dataclass(frozen=True)
class AnalyzeRequest:
    model: str
    out: Path
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    sampling: plans.Sampling = plans.Sampling()
    options: ModelOptions = ModelOptions()
    groups: int | None = None
    use_cache: bool = True
    overwrite: bool = False


def analyze_command(req: AnalyzeRequest) -> int:
    """`dit-explore analyze`: the block-similarity matrices and groups, as similarity.json and .png."""
    from dit_explore.engine.core.runs import OutputError, StagedDirectory, check_destination
    from dit_explore.engine.core.similarity import DEFAULT_PROMPTS, SIMILARITY_JSON

    try:
        source = resolve(req.model)
        cli = plans.check_sampling(req.sampling, "--")
        settings = resolve_settings(source.defaults, cli)
        source.check_size(settings.width, settings.height)
        check_destination(req.out, req.overwrite, SIMILARITY_JSON, "analysis")
    except (plans.PlanError, ModelError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if req.groups is not None and req.groups < 1:
        raise UsageError(f"--groups {req.groups}: must be at least 1")
    placement = check_memory(source, settings, req.options, analysis=True)
    prompts = read_prompts(list(req.prompts), req.prompts_file, None) if (req.prompts or req.prompts_file) \
        else list(analysis_prompts(source.name, DEFAULT_PROMPTS))

    # The destination is claimed before the model loads (as for run): its problems cost no load.
    try:
        staged = StagedDirectory(req.out, req.overwrite, marker=SIMILARITY_JSON, what="analysis")
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _analyze_into(req, source, settings, prompts, staged, placement)
    finally:
        staged.abort()  # nothing once committed or kept elsewhere


def _analyze_into(req: AnalyzeRequest, source: ModelSource, settings: Settings, prompts: list[str],
                  staged: Any, placement: Any = None) -> int:
    import json

    from dit_explore.engine.analysis import cached_analysis
    from dit_explore.engine.core.heatmap import save_heatmaps
    from dit_explore.engine.core.runs import OutputError
    from dit_explore.engine.core.similarity import SIMILARITY_JSON, SIMILARITY_PNG, group_labels
    from dit_explore.engine.core.text import shown
    from dit_explore.engine.generate import Generator

    loaded = _load(source, req.options, placement)
    started = time.perf_counter()

    def progress(p: int, count: int, done: int, total: int) -> None:
        _say(f"[{p + 1}/{count}] step {done}/{total}")

    result, cached = cached_analysis(Generator(loaded), prompts, settings, groups=req.groups,
                                     use_cache=req.use_cache, on_progress=progress)
    if cached:
        _say(f"{source.name}: this analysis was cached ({len(prompts)} prompts, {settings.steps} steps)")
    try:
        (staged.staging / SIMILARITY_JSON).write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
        save_heatmaps(result, staged.staging / SIMILARITY_PNG)
        out = staged.commit()
    except OutputError as exc:  # --out was taken meanwhile: the analysis is kept beside it, the message says where
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a full disk, ...: the result is in the analysis cache, when that could be written
        raise UsageError(f"--out {shown(req.out)}: cannot write the analysis: {exc.strerror or exc}; nothing kept")\
            from None
    for name, stack in result.stacks.items():
        groups = ", ".join(group_labels(stack.groups))
        _say(f"{name:>7}: {len(stack.groups)} groups: {groups}")
    _say(f"wrote {shown(req.out if out == staged.out else out)}/ ({SIMILARITY_JSON}, {SIMILARITY_PNG}) in "
         f"{time.perf_counter() - started:.1f} s")
    return 0


def plans_command(model: str, from_groups: Path, out: Path | None, overwrite: bool) -> int:
    """`dit-explore plans`: the study's strategies for each middle group of each stack of an analysis."""
    from dit_explore.engine.core.runs import check_destination
    from dit_explore.engine.core.similarity import SIMILARITY_JSON, group_labels, group_names, read_result
    from dit_explore.engine.core.study import study_plans
    from dit_explore.engine.core.text import shown
    from dit_explore.engine.core.userfiles import UserFileError

    try:
        source = resolve(model)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    what = "an analyze output folder, or its similarity.json"
    if not from_groups.exists():
        raise UsageError(f"--from-groups {from_groups}: no such file or folder ({what})")
    if from_groups.is_dir() and not (from_groups / SIMILARITY_JSON).is_file():
        raise UsageError(f"--from-groups {from_groups}: no {SIMILARITY_JSON} in this folder ({what})")
    try:
        result = read_result(from_groups)
    except UserFileError as exc:  # missing, not a regular file, too large, not UTF-8: one line naming it
        raise UsageError(f"--from-groups {exc}") from None
    except ValueError as exc:  # ResultError: not JSON, nested too deeply, not the shape analyze writes
        raise UsageError(f"--from-groups {from_groups}: not a similarity result ({exc}; {what})") from None
    measured = {name: s.blocks for name, s in result.stacks.items()}
    expected = {s.name: s.blocks for s in source.layout.stacks}
    if measured != expected:
        raise UsageError(f"--from-groups {from_groups}: measured on stacks {shown(measured)}, "
                         f"but {model} has {expected}")
    folder = out or Path("saved_plans") / model
    try:
        if folder.exists() and any(folder.glob(f"*{plans.PLAN_SUFFIX}")) and not overwrite:
            raise ValueError(f"{folder}: already holds plans (choose --out, or pass --overwrite)")
        check_destination(folder, True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    written = []
    for name, stack in result.stacks.items():
        names = group_names(len(stack.groups))
        for k, (first, last) in enumerate(stack.groups):
            if names[k] in ("first", "last"):
                continue
            why = (f"the similarity analysis in {from_groups} found {len(stack.groups)} groups in {name} "
                   f"({', '.join(group_labels(stack.groups))}); this is {names[k]}.")
            tag = names[k].replace(" ", "")
            for sp in study_plans(model, source.layout, name, first, last, why, prefix=f"{name}-{tag}-"):
                written.append(sp.save(folder))
    if not written:
        _say(f"no middle groups in {from_groups}: every stack has at most a first and a last group; nothing written")
        return 0
    _say(f"wrote {len(written)} plans to {folder}/")
    return 0


@dataclass(frozen=True)
class BenchRequest:
    model: str
    sampling: plans.Sampling = plans.Sampling()
    options: ModelOptions = ModelOptions()
    json_path: Path | None = None
    only: tuple[str, ...] | None = None  # the sections to measure (None: all)


BENCH_SECTIONS = ("skip", "parallel", "cached", "branches", "similarity", "end_to_end", "throughput")


def bench_command(req: BenchRequest) -> int:
    """`dit-explore bench`: the plan costs that matter to a user, measured side by side (engine/bench.py)."""
    import json

    unknown = [shown(name, 40) for name in req.only or () if name not in BENCH_SECTIONS]
    if unknown:
        raise UsageError(f"--only {' '.join(unknown)}: unknown section (known: {', '.join(BENCH_SECTIONS)})")
    try:
        source = resolve(req.model)
        settings = resolve_settings(source.defaults, plans.check_sampling(req.sampling, "--"))
        source.check_size(settings.width, settings.height)
    except (plans.PlanError, ModelError) as exc:
        raise UsageError(str(exc)) from None
    placement = check_memory(source, settings, req.options)

    from dit_explore.engine.bench import run_bench
    from dit_explore.engine.generate import Generator

    # Bench compiles the blocks itself, to time the compilation.
    loaded = _load(source, ModelOptions(req.options.device, req.options.dtype, req.options.random_weights,
                                        quantize=req.options.quantize, memory=req.options.memory), placement)
    report = run_bench(Generator(loaded), settings, compile=req.options.compile, say=lambda m: _say(f"bench: {m}…"),
                       only=req.only)
    report.header["load_s"] = round(loaded.load_seconds, 2)
    print(report.table())
    if req.json_path is not None:
        req.json_path.parent.mkdir(parents=True, exist_ok=True)
        req.json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        _say(f"wrote {req.json_path}")
    return 0


@dataclass(frozen=True)
class EvalRequest:
    model: str
    plan: str | None = None
    sampling: plans.Sampling = plans.Sampling()
    options: ModelOptions = ModelOptions()
    json_path: Path | None = None
    limit: int | None = None


@dataclass(frozen=True)
class StudyRequest:
    model: str
    out: Path
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    seeds: tuple[int, ...] = ()
    plan_files: tuple[str, ...] = ()  # none: the study's saved strategies for the model
    sampling: plans.Sampling = plans.Sampling()
    options: ModelOptions = ModelOptions()
    overwrite: bool = False


def study_command(req: StudyRequest) -> int:
    """`dit-explore study`: plans x prompts x seeds, measured against the full model (engine/study.py)."""
    from dit_explore.engine.study import study

    return study(req)


@dataclass(frozen=True)
class SweepRequest:
    model: str
    kind: str
    out: Path
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    seeds: tuple[int, ...] = ()
    plan_file: str | None = None  # step-window's plan
    window: int | None = None
    sampling: plans.Sampling = plans.Sampling()
    options: ModelOptions = ModelOptions()
    resume: bool = False
    overwrite: bool = False
    batch: int | None = None  # images per batch; None: as many as fit (at most 16)
    gpus: int | None = None  # processes, one per GPU (torch.distributed, engine/sweep_ranks.py); None: this process


def sweep_command(req: SweepRequest) -> int:
    """`dit-explore sweep`: a kind of plans against the full model, table and plot (engine/sweep.py)."""
    from dit_explore.engine.sweep import sweep

    return sweep(req)


def eval_command(req: EvalRequest) -> int:
    """`dit-explore eval`: the captioned-shapes captions rendered and read back (engine/eval.py)."""
    from dit_explore.engine.eval import evaluate

    return evaluate(req)
