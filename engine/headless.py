"""Headless commands: `dit-explore run` and `dit-explore models`.

Everything that can be checked without the model (plan, prompts, sizes, destination) is checked first,
so bad input costs no model load; every problem is reported as one line and exit code 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine import plan as plans
from engine.catalog import MODELS
from engine.resolve import ModelError, ModelSource, resolve
from engine.sampling import Settings, resolve_settings

DEFAULT_PROMPT = "a lighthouse on a rocky coast at dusk, waves breaking, warm light in the window"
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: printed as given (one line per problem), exit code 2."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_prompts(prompts: list[str] | None, prompts_file: str | None, fallback: str | None) -> list[str]:
    out = [p for p in prompts or []]
    if prompts_file is not None:
        path = Path(prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UsageError(f"--prompts {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts {path}: cannot read: {exc}") from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise UsageError(f"--prompts {path}: no prompts in it (one prompt per line)")
        out += from_file
    for p in out:
        if not p.strip():
            raise UsageError("--prompt: a prompt must not be empty")
    if not out:
        out = [fallback or DEFAULT_PROMPT]
    return out


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
class RunRequest:
    model: str
    out: Path
    plan: str | None = None
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    sampling: plans.Sampling = plans.Sampling()
    device: str = "auto"
    dtype: str | None = None
    random_weights: bool = False
    overwrite: bool = False


def run_command(req: RunRequest) -> int:
    from engine.runs import check_destination

    try:
        source = resolve(req.model)
        plan = load_plan_for(source, req.plan)
        cli = plans.check_sampling(req.sampling, "--")
    except plans.PlanError as exc:
        raise UsageError(str(exc)) from None
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    prompts = read_prompts(list(req.prompts), req.prompts_file, plan.sampling.prompt)
    try:
        check_destination(req.out, req.overwrite)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    settings = resolve_settings(source, plan.sampling, cli)
    try:
        source.check_size(settings.width, settings.height)
        plans.validate_steps(plan, settings.steps, source=req.plan or "plan")
    except (plans.PlanError, ModelError) as exc:
        raise UsageError(str(exc)) from None
    return _generate_all(req, source, plan, prompts, settings)


def _generate_all(req: RunRequest, source: ModelSource, plan: plans.Plan, prompts: list[str], settings: Settings) -> int:
    from engine.generate import Generator, dtype_name, run_record
    from engine.models import load, pick_device, pick_dtype
    from engine.runs import RunWriter, image_plan

    try:
        device = pick_device(req.device)
        dtype = pick_dtype(req.dtype, device)
        loaded = load(source, device, dtype, random_weights=req.random_weights, on_status=lambda stage, _f: _say(f"{stage}…"))
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    _say(f"{source.name} ready in {loaded.load_seconds:.1f} s ({device}, {dtype_name(dtype)}); {source.layout.describe()}")

    generator = Generator(loaded)
    writer = RunWriter(req.out, req.overwrite)
    started = time.perf_counter()
    results = []
    try:
        for i, prompt in enumerate(prompts):
            result = generator.generate(prompt, settings, plan)
            writer.add_image(result.image, image_plan(plan, source.name, settings.for_prompt(prompt)))
            results.append(result)
            _say(f"[{i + 1}/{len(prompts)}] {result.total:.2f} s  {prompt}")
        record = run_record(loaded, plan, req.plan, prompts, settings)
        record["timing"] = {
            "total": time.perf_counter() - started,
            "load": loaded.load_seconds,
            "text_encode": sum(r.text_encode for r in results),
            "decode": sum(r.decode for r in results),
            "per_image": [r.timing_json() for r in results],
        }
        record["block_runs"] = results[0].block_runs
        out = writer.commit(record)
    except BaseException:
        writer.abort()
        raise
    _say(f"wrote {out}/ ({len(results)} image{'s' if len(results) != 1 else ''} and run.json)")
    return 0


def models_command() -> int:
    """The aliases dit-explore knows, with their stacks; torch-free and instant."""
    rows = [("alias", "family", "stacks", "source")]
    for spec in MODELS.values():
        stacks = " + ".join(f"{s.name} {s.blocks}" for s in spec.layout.stacks)
        rows.append((spec.alias, spec.family, stacks, spec.repo or spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    print("\nAlso accepted: a Hugging Face repo id of a FluxPipeline, StableDiffusion3Pipeline or AuraFlowPipeline,")
    print("or a local diffusers folder. --random-weights builds a real-size alias without downloading it.")
    return 0
