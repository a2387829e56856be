"""The executor against independent references, on the tiny models of all three families.

Expected block sequences are written out by hand; the parallel-group reference is a separate averaging
module written here (torch.stack(...).mean), swapped in without the executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import dit_explore.engine.executor as executor
from dit_explore.engine.core.families import family
from dit_explore.engine.core.plan import Plan, loads, parse_order, parse_steps
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.executor import Cancelled, PlanList, applied
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded

FAMILIES = ["tiny-flux", "tiny-sd3", "tiny-auraflow"]
PROMPT = "a red cube"


def settings_for(loaded: Loaded, steps: int = 2, seed: int = 0) -> Settings:
    d = loaded.source.defaults
    return Settings(seed=seed, steps=steps, width=64, height=64, guidance=d.guidance,
                    max_sequence_length=d.max_sequence_length)


def plan_of(**orders: str) -> Plan:
    plan = Plan()
    for stack, text in orders.items():
        plan = plan.with_order(stack, parse_order(text))
    return plan


@contextmanager
def block_trace(loaded: Loaded) -> Iterator[list[tuple[str, int, float]]]:
    """Record (stack, original index, checksum of the image-stream input) for every block call."""
    trace: list[tuple[str, int, float]] = []
    handles = []
    for stack in loaded.layout.stacks:
        for index, block in enumerate(getattr(loaded.transformer, stack.attr)):

            def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, s: str = stack.name,
                     i: int = index) -> None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                trace.append((s, i, float(hidden.double().sum())))

            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield trace
    finally:
        for h in handles:
            h.remove()


def originals(loaded: Loaded) -> dict[str, nn.ModuleList]:
    return {s.attr: getattr(loaded.transformer, s.attr) for s in loaded.layout.stacks}


# Hand-expanded execution sequences (stack, text, expected block indices of that stack, in order).
SEQUENCES = [
    ("tiny-flux", "single", "0-2, 7", [0, 1, 2, 7]),  # skip 3-6
    ("tiny-flux", "single", "0-1, 4*3, 6-7", [0, 1, 4, 4, 4, 6, 7]),  # middle repeat
    ("tiny-flux", "single", "0, 6-1, 7", [0, 6, 5, 4, 3, 2, 1, 7]),  # reverse
    ("tiny-flux", "double", "0, [1-2]x2, 3", [0, 1, 2, 1, 2, 3]),  # looped parallel
    ("tiny-flux", "single", "", []),  # run no single block
    ("tiny-sd3", "double", "0-1, 3-2, 4*2, 5", [0, 1, 3, 2, 4, 4, 5]),
    ("tiny-sd3", "double", "0-4", [0, 1, 2, 3, 4]),  # context-pre-only last block skipped
    ("tiny-auraflow", "single", "0, [1-4]x3, 5", [0] + [1, 2, 3, 4] * 3 + [5]),
    ("tiny-auraflow", "double", "1, 0", [1, 0]),
    ("tiny-auraflow", "single", "", []),
]


@pytest.mark.parametrize(("model", "stack", "text", "expected"), SEQUENCES)
def test_blocks_run_in_the_planned_order(tiny_generator: Callable[[str], Generator], model: str, stack: str,
                                         text: str, expected: list[int]) -> None:
    gen = tiny_generator(model)
    with block_trace(gen.loaded) as trace:
        gen.generate(PROMPT, settings_for(gen.loaded, steps=1), plan_of(**{stack: text}))
    for s in gen.loaded.layout.stacks:
        ran = [i for name, i, _ in trace if name == s.name]
        assert ran == (expected if s.name == stack else list(range(s.blocks)))


def test_parallel_members_share_input_and_loops_feed_back(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    with block_trace(gen.loaded) as trace:
        gen.generate(PROMPT, settings_for(gen.loaded, steps=1), plan_of(single="0, [1-3]x2, 4-7"))
    calls = [(i, c) for name, i, c in trace if name == "single"]
    assert [i for i, _ in calls] == [0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 7]
    first_loop = {c for i, c in calls[1:4]}
    second_loop = {c for i, c in calls[4:7]}
    assert len(first_loop) == 1 and len(second_loop) == 1  # every member got the same input
    assert first_loop != second_loop  # the second loop got the averaged output of the first


class HandAverage(nn.Module):
    """Reference parallel group, written independently of engine.executor."""

    def __init__(self, blocks: list[nn.Module], loops: int) -> None:
        super().__init__()
        self.blocks = blocks  # plain list: not registered, like a view
        self.loops = loops

    def forward(self, **kw: Any) -> Any:
        out: Any = None
        for _ in range(self.loops):
            outs = [b(**kw) for b in self.blocks]
            if isinstance(outs[0], tuple):
                enc = torch.stack([o[0] for o in outs]).mean(0)
                hid = torch.stack([o[1] for o in outs]).mean(0)
                kw = {**kw, "hidden_states": hid, "encoder_hidden_states": enc}
                out = (enc, hid)
            else:
                out = torch.stack(outs).mean(0)
                kw = {**kw, "hidden_states": out}
        return out


def reference_latents(gen: Generator, lists: dict[str, list[nn.Module]], settings: Settings) -> torch.Tensor:
    """Latents with hand-built block lists swapped in directly (no executor)."""
    transformer = gen.loaded.transformer
    saved = originals(gen.loaded)
    embeds, _, _ = gen.embeddings(PROMPT, settings)
    try:
        for attr, modules in lists.items():
            setattr(transformer, attr, nn.ModuleList(modules))
        return gen.pipe(**embeds, num_inference_steps=settings.steps, width=settings.width, height=settings.height,
                        guidance_scale=settings.guidance, generator=torch.Generator("cpu").manual_seed(settings.seed),
                        output_type="latent").images
    finally:
        for attr, module_list in saved.items():
            setattr(transformer, attr, module_list)


@pytest.mark.parametrize(
    ("model", "attr", "text", "build"),
    [
        ("tiny-flux", "single_transformer_blocks", "0, [2-5]x3, 7",
         lambda b: [b[0], HandAverage([b[2], b[3], b[4], b[5]], 3), b[7]]),
        ("tiny-flux", "transformer_blocks", "[0-3]", lambda b: [HandAverage(list(b), 1)]),
        ("tiny-sd3", "transformer_blocks", "0, [1-4]x2, 5", lambda b: [b[0], HandAverage([b[1], b[2], b[3], b[4]], 2), b[5]]),
        ("tiny-auraflow", "single_transformer_blocks", "[0-5]x2", lambda b: [HandAverage(list(b), 2)]),
        ("tiny-auraflow", "joint_transformer_blocks", "[0-1]x4", lambda b: [HandAverage(list(b), 4)]),
    ],
)
def test_parallel_groups_match_a_hand_written_average(tiny_generator: Callable[[str], Generator], model: str,
                                                      attr: str, text: str, build: Callable[[Any], list[nn.Module]]) -> None:
    gen = tiny_generator(model)
    settings = settings_for(gen.loaded)
    stack = next(s.name for s in gen.loaded.layout.stacks if s.attr == attr)
    blocks = list(getattr(gen.loaded.transformer, attr))
    expected = reference_latents(gen, {attr: build(blocks)}, settings)
    got = gen.generate(PROMPT, settings, plan_of(**{stack: text})).latents
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    baseline = gen.generate(PROMPT, settings, Plan()).latents
    assert not torch.allclose(got, baseline, atol=1e-4)  # the group changed something


@pytest.mark.parametrize("model", FAMILIES)
def test_identity_plan_is_bit_identical_to_plain_diffusers(tiny_generator: Callable[[str], Generator], model: str) -> None:
    gen = tiny_generator(model)
    settings = settings_for(gen.loaded, seed=3)
    ours = gen.generate(PROMPT, settings, Plan())
    explicit = gen.generate(PROMPT, settings, Plan(orders=tuple(
        (s.name, tuple(range(s.blocks))) for s in gen.loaded.layout.stacks)))
    plain = gen.pipe(prompt=PROMPT, num_inference_steps=settings.steps, width=64, height=64,
                     guidance_scale=settings.guidance, generator=torch.Generator("cpu").manual_seed(3),
                     max_sequence_length=settings.max_sequence_length).images[0]
    assert np.array_equal(np.asarray(ours.image), np.asarray(plain))
    assert np.array_equal(np.asarray(explicit.image), np.asarray(plain))


def test_sd3_skip_plan_equals_sd3_skip_layers(load_tiny: Callable[[str], Loaded]) -> None:
    loaded = load_tiny("tiny-sd3")
    transformer = loaded.transformer
    gen = torch.Generator("cpu").manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(2, 4, 16, 16, generator=gen),
        "encoder_hidden_states": torch.randn(2, 77 + 32, 64, generator=gen),
        "pooled_projections": torch.randn(2, 64, generator=gen),
        "timestep": torch.tensor([500.0, 500.0]),
    }
    with torch.inference_mode():
        reference = transformer(**inputs, skip_layers=[1, 3, 5]).sample
        with applied(transformer, loaded.layout, plan_of(double="0, 2, 4")):
            ours = transformer(**inputs).sample
        full = transformer(**inputs).sample
    assert torch.equal(ours, reference)
    assert not torch.equal(ours, full)


@pytest.mark.parametrize("model", FAMILIES)
def test_block_lists_are_restored_after_an_exception_mid_run(tiny_generator: Callable[[str], Generator], model: str) -> None:
    gen = tiny_generator(model)
    before = originals(gen.loaded)
    settings = settings_for(gen.loaded)
    baseline = gen.generate(PROMPT, settings, Plan())
    calls = [0]

    def fail_on_fifth() -> None:
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("boom")

    last_stack = gen.loaded.layout.stacks[-1]
    with pytest.raises(RuntimeError, match="boom"):
        gen.generate(PROMPT, settings, plan_of(**{last_stack.name: f"[0-1]x2, {last_stack.blocks - 2}"}), check=fail_on_fifth)
    assert calls[0] == 5
    after = originals(gen.loaded)
    assert all(after[attr] is before[attr] for attr in before)
    assert not any(isinstance(m, PlanList) for m in gen.loaded.transformer.modules())
    again = gen.generate(PROMPT, settings, Plan())
    assert np.array_equal(np.asarray(again.image), np.asarray(baseline.image))


def test_block_lists_are_restored_when_a_block_raises(tiny_generator: Callable[[str], Generator],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gen = tiny_generator("tiny-flux")
    before = originals(gen.loaded)
    victim = gen.loaded.transformer.single_transformer_blocks[2]

    def explode(*_a: Any, **_k: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(victim, "forward", explode)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        gen.generate(PROMPT, settings_for(gen.loaded), plan_of(single="7-0"))
    assert all(getattr(gen.loaded.transformer, a) is m for a, m in before.items())


def test_cancel_lands_between_blocks(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    executed: list[int] = []
    budget = [6]

    def check() -> None:
        if len(executed) >= budget[0]:
            raise Cancelled()

    with block_trace(gen.loaded) as trace:
        def counting_check() -> None:
            executed[:] = trace  # blocks started so far
            check()

        with pytest.raises(Cancelled):
            gen.generate(PROMPT, settings_for(gen.loaded), Plan(), check=counting_check)
    assert len(trace) == 6  # stopped right before the 7th block execution


def test_active_steps_switch_between_plan_and_full_model(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    plan = plan_of(single="0, 7")
    plan = Plan(orders=plan.orders, active_steps=parse_steps("1, 3"))
    with block_trace(gen.loaded) as trace:
        gen.generate(PROMPT, settings_for(gen.loaded, steps=4), plan)
    singles = [i for name, i, _ in trace if name == "single"]
    full = list(range(8))
    assert singles == full + [0, 7] + full + [0, 7]
    doubles = [i for name, i, _ in trace if name == "double"]
    assert doubles == list(range(4)) * 4


def test_nested_application_is_refused(load_tiny: Callable[[str], Loaded]) -> None:
    loaded = load_tiny("tiny-flux")
    with (applied(loaded.transformer, loaded.layout, plan_of(single="0")),
          pytest.raises(RuntimeError, match="left applied"),
          applied(loaded.transformer, loaded.layout, Plan())):
        pass
    assert type(loaded.transformer.single_transformer_blocks) is nn.ModuleList


class _Scale(nn.Module):
    """A block returning (encoder_hidden_states, hidden_states) as Flux's single blocks do: halves of
    one tensor (slices, so views), each scaled by this member's factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                temb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        joined = torch.cat([encoder_hidden_states, hidden_states], dim=1) * self.factor
        text = encoder_hidden_states.shape[1]
        return joined[:, :text], joined[:, text:]


def _group_inputs(batch: int, tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 100 + tokens)
    return (torch.randn(batch, tokens, 6, generator=gen).to(dtype), torch.randn(batch, 3, 6, generator=gen).to(dtype))


def _reference_mean(members: list[_Scale], hidden: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The float32 mean of each stream (summed in member order), rounded once, written independently of
    the executor."""
    outs = [m(hidden, text) for m in members]
    return tuple((sum(o[k].float() for o in outs) / len(outs)).to(hidden.dtype) for k in range(2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_group_average_is_the_float32_mean_rounded_once(dtype: torch.dtype) -> None:
    """Eager blocks: every group size gives the float32 mean of its members' streams, rounded once, and
    leaves the members' own outputs untouched (a float32 sum must not add into the first output)."""
    io = family("flux").stack("single").io
    hidden, text = _group_inputs(2, 5, dtype)
    for n in (2, 3, 4, 7):
        members = [_Scale(1 + 0.37 * i) for i in range(n)]
        got = executor.ParallelGroup(members, 1, io)(hidden, text)
        expected = _reference_mean(members, hidden, text)
        assert all(torch.equal(g, e) for g, e in zip(got, expected))
        assert [g.dtype for g in got] == [dtype, dtype] and got[1].shape == hidden.shape


def test_compiled_groups_average_in_kernels_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With compiled blocks, groups average in the kernels prepare_averaging compiled: after it, groups of
    any size, batch and token count, fed slices (views) as Flux's single blocks return, compile nothing
    more (Dynamo's graph counter), in either grad mode blocks run in, and give the same float32 mean
    rounded once."""
    from torch._dynamo.utils import counters

    executor.prepare_averaging(torch.device("cpu"), torch.bfloat16)
    used: list[str] = []
    kernel = executor._COMPILED_SUM._kernel

    def spy(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        used.append(fn.__name__)
        return kernel(fn)

    monkeypatch.setattr(executor._COMPILED_SUM, "_kernel", spy)
    io = family("flux").stack("single").io
    graphs = counters["stats"]["unique_graphs"]
    cases = ((2, 1, 9), (3, 2, 4), (5, 1, 17), (8, 3, 2))
    # Blocks run under no_grad (the pipelines) and inference_mode (the engine's timing); Dynamo guards on it.
    for mode, (n, batch, tokens) in zip((torch.no_grad, torch.inference_mode) * 2, cases):
        members = [_Scale(1 + 0.37 * i) for i in range(n)]
        for m in members:  # what Module.compile() sets; here without compiling the stand-in blocks
            m._compiled_call_impl = m._call_impl
        with mode():
            hidden, text = _group_inputs(batch, tokens, torch.bfloat16)
            got = executor.ParallelGroup(members, 2, io)(hidden, text)
            expected = _reference_mean(members, *reversed(_reference_mean(members, hidden, text)))
        assert all(torch.equal(g, e) for g, e in zip(got, expected)), (n, batch, tokens)
        assert got[1].shape == hidden.shape and executor.ParallelGroup(members, 1, io).fused
    assert counters["stats"]["unique_graphs"] == graphs
    assert {"_mean2", "_start", "_add", "_finish"} <= set(used)


# Steps 0-4 of a 5-step run on tiny-flux (double 4 blocks, single 8): what each step runs, by hand.
PER_STEP = """\
version = 2
[order]
single = "0, 7"
[[steps]]
steps = "0"
[steps.order]
double = "3-0"
[[steps]]
steps = "2"
[steps.order]
[[steps]]
steps = "3"
[steps.order]
double = "1, [2-3]x2"
[[steps]]
steps = "4"
[steps.order]
single = "0, 7"
"""
PER_STEP_RUNS = [
    [("double", i) for i in (3, 2, 1, 0)] + [("single", 0), ("single", 7)],  # the table's double, default single
    [("double", i) for i in range(4)] + [("single", 0), ("single", 7)],  # the default
    [("double", i) for i in range(4)] + [("single", i) for i in range(8)],  # an empty table: the full model
    [("double", i) for i in (1, 2, 3, 2, 3)] + [("single", 0), ("single", 7)],  # a looped group in double
    [("double", i) for i in range(4)] + [("single", 0), ("single", 7)],  # a table that repeats the default
]


def traced_steps(gen: Generator, plan: Plan, steps: int) -> list[list[tuple[str, int]]]:
    """(stack, block) of every block call, split by transformer call (one per denoising step)."""
    starts: list[int] = []
    with block_trace(gen.loaded) as trace:
        hook = gen.loaded.transformer.register_forward_pre_hook(lambda *_: starts.append(len(trace)))
        try:
            gen.generate(PROMPT, settings_for(gen.loaded, steps=steps), plan)
        finally:
            hook.remove()
    return [[(s, i) for s, i, _ in trace[a:b]] for a, b in zip(starts, [*starts[1:], len(trace)])]


def test_step_tables_switch_the_block_lists_at_each_step(tiny_generator: Callable[[str], Generator],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    gen = tiny_generator("tiny-flux")
    before = originals(gen.loaded)
    built: list[str] = []
    real = executor.build_list

    def counting(blocks: nn.ModuleList, order: Any, spec: Any, *args: Any, **kwargs: Any) -> PlanList:
        built.append(spec.name)
        return real(blocks, order, spec, *args, **kwargs)

    monkeypatch.setattr(executor, "build_list", counting)
    assert traced_steps(gen, loads(PER_STEP), 5) == PER_STEP_RUNS
    # Four distinct sets of orders (step 4 runs step 1's), each stack's list built once per set.
    assert built == ["double", "single"] * 4
    assert all(getattr(gen.loaded.transformer, a) is m for a, m in before.items())


def test_block_lists_are_restored_when_a_per_step_plan_fails_mid_run(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    before = originals(gen.loaded)
    transformer_calls = [0]
    hook = gen.loaded.transformer.register_forward_pre_hook(
        lambda *_: transformer_calls.__setitem__(0, transformer_calls[0] + 1))

    def fail_in_step_2() -> None:
        if transformer_calls[0] == 3:  # between two blocks of step 2 (the third transformer call)
            raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            gen.generate(PROMPT, settings_for(gen.loaded, steps=5), loads(PER_STEP), check=fail_in_step_2)
    finally:
        hook.remove()
    assert transformer_calls[0] == 3
    assert all(getattr(gen.loaded.transformer, a) is m for a, m in before.items())
    assert not any(isinstance(m, PlanList) for m in gen.loaded.transformer.modules())


def test_a_table_over_every_step_is_that_order(tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator("tiny-flux")
    settings = settings_for(gen.loaded, steps=2)
    direct = gen.generate(PROMPT, settings, plan_of(single="0-2, 7")).latents
    tabled = loads('version = 2\n[order]\nsingle = "7-0"\n[[steps]]\nsteps = "0-1"\n[steps.order]\nsingle = "0-2, 7"\n')
    assert torch.equal(gen.generate(PROMPT, settings, tabled).latents, direct)
    assert not torch.equal(gen.generate(PROMPT, settings, plan_of(single="7-0")).latents, direct)
