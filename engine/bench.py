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
from dit_explore.engine.core.families import BlockIO
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.core.study import skip_plans
from dit_explore.engine.executor import ParallelGroup, applied
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded, compile_blocks, is_compile_failure, settle_objects
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


@dataclass
class Timed:
    """Per-call milliseconds of interleaved variants, one sample per round."""

    samples: dict[str, list[float]]

    def __getitem__(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def spread(self, name: str, over: str) -> str:
        """The interquartile range of the round-by-round ratio name / over (the rounds interleave the
        variants, so each round's ratio is a paired measurement)."""
        return _iqr([a / b for a, b in zip(self.samples[name], self.samples[over])])


def _iqr(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q1, _median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q1:.4f}-{q3:.4f}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextmanager
def _first_call_of(module: torch.nn.Module) -> Iterator[list[StepInputs]]:
    """Within the body, the arguments of `module`'s first call are copied into the yielded list (a hook:
    not for compiled modules, whose hook would be traced)."""
    captured: list[StepInputs] = []

    def copy(value: Any) -> Any:
        return value.clone() if torch.is_tensor(value) else value

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not captured:
            captured.append(StepInputs(tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def capture_step_inputs(gen: Generator, settings: Settings) -> StepInputs:
    """The arguments of the transformer's first call in a real generation (one step)."""
    with _first_call_of(gen.loaded.transformer) as captured:
        gen.generate("a lighthouse at dusk", dataclasses.replace(settings, steps=1), plans.Plan(), decode=False)
    return captured[0]


def capture_block_inputs(transformer: torch.nn.Module, block: torch.nn.Module, inputs: StepInputs) -> StepInputs:
    """The arguments `block` gets in one transformer call on `inputs` (copies; before compiling)."""
    with _first_call_of(block) as captured, torch.no_grad():
        inputs(transformer)
    return captured[0]


def _group_against_members(members: list[torch.nn.Module], loops: int, io: BlockIO,
                           block_inputs: StepInputs) -> tuple[dict[str, Variant], Callable[[], None]]:
    """Variants for `measure`: the parallel group of `members` (as the executor builds it), and the same
    blocks run one after another, `loops` times over, both from the inputs the first member gets in a
    real step: what a group costs over its members, without the rest of the step's time around it."""
    group = ParallelGroup(members, loops, io, "bench group")

    def one_after_another() -> None:
        args, kwargs, out = block_inputs.args, block_inputs.kwargs, None
        for _ in range(loops):
            for member in members:
                if out is not None:
                    args, kwargs = io.feed_back(args, kwargs, out, "bench chain")
                out = member(*args, **kwargs)

    running: list[Callable[[], None]] = [one_after_another]

    def using(fn: Callable[[], None]) -> Variant:
        @contextmanager
        def variant() -> Iterator[None]:
            running[0] = fn
            yield

        return variant

    def call() -> None:
        with torch.no_grad():
            running[0]()

    return {"members": using(one_after_another), "group": using(lambda: block_inputs(group))}, call


def _cached_variant(transformer: torch.nn.Module, layout: Any, stack: str, blocks: int, span: tuple[int, int],
                    mode: str, step: Callable[[], None]) -> tuple[plans.Plan, Variant]:
    """A plan whose `stack` takes `span`'s contribution from earlier steps (`mode`: reuse or forecast), and
    a variant that runs its steps 0 and 1 (the full model: the span computes and records its residual)
    and leaves it at step 2, where the span adds its kept residual or extrapolates the last two."""
    first, last = span
    order = plans.parse_order(f"0-{first - 1}, {first}-{last}@{mode}, {last + 1}-{blocks - 1}")
    plan = plans.Plan(orders=((stack, order),), step_orders=(plans.StepTable(steps=(0, 1)),))
    plans.validate(plan, layout)

    @contextmanager
    def at_a_cached_step() -> Iterator[None]:
        with applied(transformer, layout, plan) as handle:
            for computed in (0, 1):
                handle.at_step(computed)
                step()
            handle.at_step(2)
            yield

    return plan, at_a_cached_step


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
    repeats = repeats or (20 if cuda else 3)
    inner = 3 if cuda else 2
    transformer = loaded.transformer
    report = BenchReport({
        "model": loaded.source.name, "random_weights": loaded.random_weights, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else "none", "dtype": str(loaded.dtype).removeprefix("torch."),
        "size": f"{settings.width}x{settings.height}", "steps": settings.steps, "torch": torch.__version__,
        "compile": compile, "quantization": loaded.quantization, "placement": loaded.offloaded or "full",
        "date": time.strftime("%Y-%m-%d"),
    })
    inputs = capture_step_inputs(gen, settings)
    stack = max(layout.stacks, key=lambda s: s.blocks)
    n = stack.blocks
    start = max(1, n // 3)  # where the parallel groups and the cached span begin
    # The inputs the group's first block gets in a real step (captured before any compilation: a hook).
    group_inputs = capture_block_inputs(transformer, getattr(transformer, stack.attr)[start], inputs) \
        if wanted("parallel") else None

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

    def against_ideal(section: str, label: str, name: str, timed: Timed, ideal: float) -> None:
        """A row of `section`: variant `name`'s step against the full step, measured and ideal."""
        measured = timed[name] / timed["full"]
        report.add(section, plan=label, step_ms=timed[name], measured_ratio=measured, iqr=timed.spread(name, "full"),
                   ideal_ratio=ideal, off_by=measured / ideal - 1)

    def measure(variants: dict[str, Variant], call: Callable[[], None] = step) -> Timed:
        """Interleaved per-call milliseconds of each variant, `repeats` rounds of `inner` calls."""
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for variant in variants.values():  # warm each variant once (allocator, caches)
            with variant():
                call()
        for _ in range(repeats):
            for name, variant in variants.items():
                with variant():
                    samples[name].append(timer.ms(call, inner))
        return Timed(samples)

    if compile:
        say("compiling every block (regional compilation)")
        # The eager time is taken after compiling, with compilation switched off (set_stance).
        timer.sync()
        begin = time.perf_counter()
        compile_blocks(transformer, layout, device, loaded.dtype)  # (compiles the groups' averaging now)
        loaded.compiled = True
        step()
        compile = loaded.compiled  # False if the first call had to fall back
        if compile:
            timer.sync()
            first = time.perf_counter() - begin
            settle_objects()  # as the engine does after its first compiled generation
            timed = measure({"compiled": nullcontext, "eager": lambda: torch.compiler.set_stance("force_eager")})
            report.add("compile", eager_step_ms=timed["eager"], compile_and_first_call_s=first,
                       compiled_step_ms=timed["compiled"], speedup=timed["eager"] / timed["compiled"],
                       iqr=timed.spread("eager", "compiled"))

    say("counting FLOPs per block")
    with torch.compiler.set_stance("force_eager"):
        total_flops, per_block = block_flops(loaded, inputs)

    say("identity plan vs unmodified transformer")
    base = measure({"unmodified": nullcontext, "identity plan": plan_variant(plans.Plan())})
    report.add("overhead", unmodified_ms=base["unmodified"], identity_plan_ms=base["identity plan"],
               ratio=base["identity plan"] / base["unmodified"], iqr=base.spread("identity plan", "unmodified"))
    full_ms = base["unmodified"]

    skips = skip_plans(layout) if wanted("skip") else {}
    if skips:
        say(f"skip plans on {stack.name}")
        timed = measure({"full": nullcontext, **{name: plan_variant(p) for name, p in skips.items()}})
    for name, plan in skips.items():
        against_ideal("skip", f"{stack.name}: {plans.format_order(plan.order(stack.name) or ())}", name, timed,
                      plan_flops(plan, loaded, total_flops, per_block) / total_flops)

    groups = [(k, loops) for k, loops in ((2, 1), (4, 1), (4, 3)) if start + k < n - 1 and wanted("parallel")]
    if groups and group_inputs is not None:
        say("parallel groups")
        blocks = getattr(transformer, stack.attr)
        io = loaded.family.stack(stack.name).io
        for k, loops in groups:
            members = [blocks[i] for i in range(start, start + k)]
            timed = measure(*_group_against_members(members, loops, io, group_inputs))
            report.add("parallel", group=f"{stack.name} [{start}-{start + k - 1}]x{loops}", group_ms=timed["group"],
                       members_ms=timed["members"], ratio=timed["group"] / timed["members"],
                       iqr=timed.spread("group", "members"))
        # As a user meets it: the same group in a whole step, against the step without its blocks.
        k = groups[min(1, len(groups) - 1)][0]
        head, tail = f"0-{start - 1}", f"{start + k}-{n - 1}"
        members_text = f"{start}-{start + k - 1}"
        timed = measure({
            "full": nullcontext,
            "without": plan_variant(plans.Plan().with_order(stack.name, plans.parse_order(f"{head}, {tail}"))),
            "group": plan_variant(plans.Plan().with_order(
                stack.name, plans.parse_order(f"{head}, [{members_text}], {tail}"))),
        })
        per_round = [(g - w) / (f - w) for f, w, g in
                     zip(timed.samples["full"], timed.samples["without"], timed.samples["group"]) if f > w]
        report.add("parallel_in_step", group=f"{stack.name} [{members_text}]x1", step_ms=timed["group"],
                   full_step_ms=timed["full"], without_members_ms=timed["without"],
                   ratio=(timed["group"] - timed["without"]) / (timed["full"] - timed["without"]),
                   iqr=_iqr(per_round))

    if wanted("cached"):
        say("reused and forecast spans")
        span = (start, start + max(2, n // 3) - 1)
        cached = {mode: _cached_variant(transformer, layout, stack.name, n, span, mode, step)
                  for mode in plans.CACHE_MODES}
        timed = measure({"full": nullcontext, **{mode: variant for mode, (_plan, variant) in cached.items()}})
        for mode, (plan, _variant) in cached.items():
            against_ideal("cached", f"{stack.name}: {plans.format_order(plan.order(stack.name) or ())}", mode, timed,
                          plan_flops(plan, loaded, total_flops, per_block) / total_flops)

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
            against_ideal("branches", name, name, timed, 1 + extra / total_flops)

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

    if compile:
        say("plan changes after compilation")
        # Blocks reordered and repeated: only the block lists change, nothing may compile; parallel groups of
        # sizes not run before: their averaging kernels were compiled with the blocks, for any size.
        # The first call after the change and the steady calls are timed alike: one call from an idle
        # device, synchronized, wall clock (a call's launch latency is in both); back-to-back calls timed
        # with events (the device never idles between them) are reported beside them.
        def wall_ms() -> float:
            timer.sync()
            begin = time.perf_counter()
            step()
            timer.sync()
            return (time.perf_counter() - begin) * 1000

        changes = [f"0, 2*2, 1, 3-{n - 1}", f"0, [1-3], 4-{n - 1}"] + ([f"0, [1-5]x2, 6-{n - 1}"] if n > 7 else [])
        for text in changes:
            changed = plans.Plan().with_order(stack.name, plans.parse_order(text))
            plans.validate(changed, layout)
            graphs = _graphs_compiled()
            with applied(transformer, layout, changed):
                first_ms = wall_ms()
                steady = [wall_ms() for _ in range(repeats)]
                back_to_back = statistics.median(timer.ms(step, inner) for _ in range(repeats))
            report.add("compile_plan_change", plan=f"{stack.name}: {plans.format_order(changed.order(stack.name) or ())}",
                       first_call_ms=first_ms, steady_call_ms=statistics.median(steady),
                       first_over_steady=first_ms / statistics.median(steady), steady_iqr_ms=_iqr(steady),
                       back_to_back_ms=back_to_back, graphs_compiled=_graphs_compiled() - graphs)
    if wanted("throughput"):
        # Last: a minute of large matmuls leaves the device slower for a while (on an H100, the first SD3
        # step after it took 1.14x a steady one), which would be charged to whatever is timed next.
        say("matmul peak")
        peak = matmul_peak_tflops(device, loaded.dtype, timer)
        achieved = total_flops / (full_ms / 1000) / 1e12
        report.add("throughput", step_tflop=total_flops / 1e12, step_ms=full_ms, achieved_tflops=achieved,
                   matmul_peak_tflops=peak, fraction_of_peak=achieved / peak)
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
