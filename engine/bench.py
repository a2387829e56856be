"""`dit-explore bench`: what a plan costs, measured side by side in one process on the same inputs.

Every comparison times interleaved variants (A, B, A, B, ...) on the transformer inputs of a real
denoising step, reports medians, and uses CUDA events on a GPU. Ideal ratios come from FLOPs counted
per block with torch's FlopCounterMode on that same step, so "ideal" means "time proportional to the
work the plan asks for".
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from dit_explore.engine.analysis import SimilarityAccumulator, image_token_count
from dit_explore.engine.branches import applied_with_branches
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.core.study import skip_plans
from dit_explore.engine.executor import applied
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded, compile_blocks, is_compile_failure
from dit_explore.engine.timing import StepInputs, Timer

Variant = Callable[[], AbstractContextManager[Any]]


@dataclass
class BenchReport:
    header: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, section: str, **row: Any) -> None:
        self.sections.setdefault(section, []).append(row)

    def to_json(self) -> dict[str, Any]:
        return {"header": self.header, **self.sections}

    def table(self) -> str:
        lines = [" · ".join(f"{k} {v}" for k, v in self.header.items())]
        for section, rows in self.sections.items():
            lines += ["", section]
            keys = list(dict.fromkeys(k for row in rows for k in row))
            cells = [[_fmt(row.get(k, "")) for k in keys] for row in rows]
            widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
            lines.append("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
            lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def capture_step_inputs(gen: Generator, settings: Settings) -> StepInputs:
    """The arguments of the transformer's first call in a real generation (one step)."""
    captured: list[StepInputs] = []

    def copy(value: Any) -> Any:
        return value.clone() if torch.is_tensor(value) else value

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not captured:
            captured.append(StepInputs(tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}))

    handle = gen.loaded.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        gen.generate("a lighthouse at dusk", dataclasses.replace(settings, steps=1), plans.Plan(), decode=False)
    finally:
        handle.remove()
    return captured[0]


def block_flops(loaded: Loaded, inputs: StepInputs) -> tuple[float, dict[tuple[str, int], float]]:
    """FLOPs of one transformer call, and of each block in it."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        inputs(loaded.transformer)
    counts = counter.get_flop_counts()
    total = float(sum(counts["Global"].values()))
    prefix = type(loaded.transformer).__name__
    per_block = {}
    for stack in loaded.layout.stacks:
        for i in range(stack.blocks):
            per_block[(stack.name, i)] = float(sum(counts.get(f"{prefix}.{stack.attr}.{i}", {}).values()))
    return total, per_block


def plan_flops(plan: plans.Plan, loaded: Loaded, total: float, per_block: dict[tuple[str, int], float]) -> float:
    """FLOPs of a step under `plan`: the non-block work plus each block execution the plan asks for (a
    cached span's steps after the first run no block: nothing, its residual's addition aside)."""
    outside = total - sum(per_block.values())
    work = outside
    for name, order in plan.resolved(loaded.layout).items():
        for unit in order:
            if isinstance(unit, int):
                work += per_block[(name, unit)]
            elif isinstance(unit, plans.Cached):
                continue
            else:
                work += unit.loops * sum(per_block[(name, m)] for m in unit.members)
    return work


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, timer: Timer) -> float:
    """Sustained TFLOP/s of a large square matmul in the model's dtype (the device's practical peak)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    timer.sync()
    ms = statistics.median(timer.ms(lambda: a @ b, 10 if device.type == "cuda" else 2) for _ in range(5))
    return 2 * n**3 / (ms / 1000) / 1e12


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def run_bench(gen: Generator, settings: Settings, *, compile: bool = False, repeats: int | None = None,
              say: Callable[[str], None] = lambda _m: None, only: tuple[str, ...] | None = None) -> BenchReport:
    """Every section of the bench (or the `only` ones; the overhead, which the others divide by, always)."""

    def wanted(section: str) -> bool:
        return only is None or section in only

    loaded = gen.loaded
    device, layout = loaded.device, loaded.layout
    cuda = device.type == "cuda"
    timer = Timer(device)
    repeats = repeats or (7 if cuda else 3)
    inner = 5 if cuda else 2
    transformer = loaded.transformer
    report = BenchReport({
        "model": loaded.source.name, "random_weights": loaded.random_weights, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else "none", "dtype": str(loaded.dtype).removeprefix("torch."),
        "size": f"{settings.width}x{settings.height}", "steps": settings.steps, "torch": torch.__version__,
        "compile": compile, "quantization": loaded.quantization, "date": time.strftime("%Y-%m-%d"),
    })
    inputs = capture_step_inputs(gen, settings)

    def step() -> None:
        """One transformer call, under no_grad like the pipelines' own calls. If compilation fails on a
        call (a graph not traced before), the blocks fall back to eager and the report says so."""
        with torch.no_grad():
            try:
                inputs(transformer)
            except Exception as exc:
                if not (loaded.compiled and is_compile_failure(exc)):
                    raise
                report.add("compile_fallback", error=loaded.fall_back_to_eager(exc), then="eager")
                inputs(transformer)

    def plan_variant(plan: plans.Plan) -> Variant:
        plans.validate(plan, layout)  # e.g. SD3's last block may only end the stack
        return lambda: applied_with_branches(transformer, layout, plan, [0])  # (its guidance branches too)

    def measure(variants: dict[str, Variant]) -> dict[str, float]:
        """Interleaved medians of per-call milliseconds."""
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for variant in variants.values():  # warm each variant once (allocator, caches)
            with variant():
                step()
        for _ in range(repeats):
            for name, variant in variants.items():
                with variant():
                    samples[name].append(timer.ms(step, inner))
        return {name: statistics.median(values) for name, values in samples.items()}

    if compile:
        say("compiling every block (regional compilation)")
        # The eager time is taken after compiling, with compilation switched off (set_stance).
        compile_blocks(transformer, layout)
        loaded.compiled = True
        timer.sync()
        begin = time.perf_counter()
        step()
        compile = loaded.compiled  # False if the first call had to fall back
        if compile:
            timer.sync()
            first = time.perf_counter() - begin
            compiled = measure({"compiled": nullcontext})["compiled"]
            with torch.compiler.set_stance("force_eager"):
                eager = measure({"eager": nullcontext})["eager"]
            report.add("compile", eager_step_ms=eager, compile_and_first_call_s=first, compiled_step_ms=compiled,
                       speedup=eager / compiled)

    say("counting FLOPs per block")
    with torch.compiler.set_stance("force_eager"):
        total_flops, per_block = block_flops(loaded, inputs)

    say("identity plan vs unmodified transformer")
    base = measure({"unmodified": nullcontext, "identity plan": plan_variant(plans.Plan())})
    report.add("overhead", unmodified_ms=base["unmodified"], identity_plan_ms=base["identity plan"],
               ratio=base["identity plan"] / base["unmodified"])
    full_ms = base["unmodified"]

    stack = max(layout.stacks, key=lambda s: s.blocks)
    n = stack.blocks
    skips = skip_plans(layout) if wanted("skip") else {}
    if skips:
        say(f"skip plans on {stack.name}")
        timed = measure({"full": nullcontext, **{name: plan_variant(p) for name, p in skips.items()}})
    for name, plan in skips.items():
        ideal = plan_flops(plan, loaded, total_flops, per_block) / total_flops
        measured = timed[name] / timed["full"]
        report.add("skip", plan=f"{stack.name}: {plans.format_order(plan.order(stack.name) or ())}",
                   step_ms=timed[name], measured_ratio=measured, ideal_ratio=ideal, off_by=measured / ideal - 1)

    start = max(1, n // 3)
    groups = [(k, loops) for k, loops in ((2, 1), (4, 1), (4, 3)) if start + k < n - 1 and wanted("parallel")]
    if groups:
        say("parallel groups")
    variants: dict[str, Variant] = {"full": nullcontext}
    for k, loops in groups:
        members = f"{start}-{start + k - 1}"
        rest_head, rest_tail = f"0-{start - 1}", f"{start + k}-{n - 1}"
        without = plans.parse_order(f"{rest_head}, {rest_tail}")
        variants[f"without {members}"] = plan_variant(plans.Plan().with_order(stack.name, without))
        variants[f"[{members}]x{loops}"] = plan_variant(plans.Plan().with_order(
            stack.name, plans.parse_order(f"{rest_head}, [{members}]x{loops}, {rest_tail}")))
    timed = measure(variants) if groups else {}
    for k, loops in groups:
        members = f"{start}-{start + k - 1}"
        without_ms = timed[f"without {members}"]
        member_ms = timed["full"] - without_ms  # the members run one after another in the full model
        group_ms = timed[f"[{members}]x{loops}"] - without_ms
        report.add("parallel", group=f"{stack.name} [{members}]x{loops}", group_ms=group_ms,
                   members_sum_ms=member_ms * loops,
                   ratio=group_ms / (member_ms * loops) if member_ms > 0 else float("nan"))

    if loaded.family.guidance_halves is not None and loaded.family.uses_cfg(settings.guidance) and wanted("branches"):
        say("guidance branches")
        middle = n // 2
        kept = plans.parse_order(f"0-{middle - 2}, {middle + 2}-{n - 1}")  # 3 middle blocks left out, as SLG
        branched_plans = {
            "[uncond] with the same orders (the batch split)": plans.Plan(uncond=plans.Branch()),
            "[extra] of the full model": plans.Plan(extra=plans.Branch(scale=1.0)),
            f"[extra] {stack.name}: {plans.format_order(kept)}": plans.Plan(
                extra=plans.Branch(orders=((stack.name, kept),), scale=2.8)),
        }
        timed = measure({"full": nullcontext, **{name: plan_variant(p) for name, p in branched_plans.items()}})
        for name, plan in branched_plans.items():
            extra = plan_flops(plans.Plan(orders=plan.extra.orders), loaded, total_flops, per_block) / 2 \
                if plan.extra is not None else 0.0  # an extra pass runs the conditional half
            ideal = 1 + extra / total_flops
            measured = timed[name] / timed["full"]
            report.add("branches", plan=name, step_ms=timed[name], measured_ratio=measured, ideal_ratio=ideal,
                       off_by=measured / ideal - 1)

    if wanted("similarity"):
        say("similarity capture")
        report.add("similarity", **_similarity_cost(gen, settings, inputs, step, timer, repeats, inner))

    if wanted("end_to_end"):
        say("end-to-end image")
        totals = []
        for i in range(3):
            result = gen.generate(f"bench prompt {i} {time.time()}", settings, plans.Plan())
            totals.append(result)
        best = sorted((r.timing for r in totals), key=lambda t: t.total)[len(totals) // 2]
        report.add("end_to_end", steps=settings.steps, total_s=best.total, text_encode_s=best.text_encode,
                   transformer_s=best.transformer_total, decode_s=best.decode)

    if wanted("throughput"):
        say("matmul peak")
        peak = matmul_peak_tflops(device, loaded.dtype, timer)
        achieved = total_flops / (full_ms / 1000) / 1e12
        report.add("throughput", step_tflop=total_flops / 1e12, step_ms=full_ms, achieved_tflops=achieved,
                   matmul_peak_tflops=peak, fraction_of_peak=achieved / peak)

    if compile:
        say("plan changes after compilation")
        # Blocks reordered and repeated: only the block lists change, nothing may compile. Then a parallel
        # group of a size not seen before: its (small) averaging kernel compiles once.
        for text in (f"0, 2*2, 1, 3-{n - 1}", f"0, [1-3], 4-{n - 1}"):
            changed = plans.Plan().with_order(stack.name, plans.parse_order(text))
            plans.validate(changed, layout)
            graphs = _graphs_compiled()
            with applied(transformer, layout, changed):
                timer.sync()
                begin = time.perf_counter()
                step()
                timer.sync()
                first_ms = (time.perf_counter() - begin) * 1000
                steady = statistics.median(timer.ms(step, inner) for _ in range(repeats))
            report.add("compile_plan_change", plan=f"{stack.name}: {plans.format_order(changed.order(stack.name) or ())}",
                       first_call_ms=first_ms, steady_ms=steady, first_over_steady=first_ms / steady,
                       graphs_compiled=_graphs_compiled() - graphs)
    return report


def _similarity_cost(gen: Generator, settings: Settings, inputs: StepInputs, step: Callable[[], None],
                     timer: Timer, repeats: int, inner: int) -> dict[str, Any]:
    """A step with the similarity capture (outputs kept, Gram matrix added at the step's end) vs a plain step,
    in time and in peak device memory."""
    loaded = gen.loaded
    acc = SimilarityAccumulator(loaded.layout, image_token_count(gen, settings), loaded.device, loaded.dtype)

    @contextmanager
    def capturing() -> Iterator[None]:
        with applied(loaded.transformer, loaded.layout, plans.Plan(), wrap=acc.wrap):
            yield

    def captured_step() -> None:
        step()
        acc.end_step()

    def peak_extra(fn: Callable[[], None]) -> float:
        if loaded.device.type != "cuda":
            return float("nan")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(loaded.device)
        before = torch.cuda.memory_allocated(loaded.device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(loaded.device) - before) / 2**30

    with capturing():
        captured_step()  # allocates the step buffer
    plain, captured = [], []
    for _ in range(repeats):
        plain.append(timer.ms(step, inner))
        with capturing():
            captured.append(timer.ms(captured_step, inner))
    plain_peak = peak_extra(step)
    with capturing():
        capture_peak = peak_extra(captured_step)
    buffer = acc.buffer.numel() * acc.buffer.element_size() / 2**30 if acc.buffer is not None else 0.0
    return {"plain_ms": statistics.median(plain), "capture_ms": statistics.median(captured),
            "ratio": statistics.median(captured) / statistics.median(plain),
            "extra_peak_gib": capture_peak - plain_peak + buffer, "step_buffer_gib": buffer}
