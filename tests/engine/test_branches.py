"""Guidance-branch plans ([uncond], [extra]): the file syntax and its refusals in one line each, the cost
per step, an extra pass against diffusers' own Skip Layer Guidance on SD3 (bit for bit), and an
unconditional-pass plan against a hand-written split of the batch on AuraFlow."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.plan import Branch, PlanError
from dit_explore.engine.core.sampling import block_runs, resolve_settings
from dit_explore.engine.core.text import shown

SD3 = MODELS["tiny-sd3"].layout  # double 6 (block 5 returns no text stream)
AURA = MODELS["tiny-auraflow"].layout
FLUX = MODELS["tiny-flux"].layout

SLG = """version = 2
name = "skip layer guidance"

[order]

[extra]
scale = 2.8
steps = "1-4"
[extra.order]
double = "0-1, 4-5"
"""


def problem(text: str, layout: Any = SD3, steps: int = 8) -> str:
    with pytest.raises(PlanError) as exc:
        plan = plans.loads(text, "p.toml")
        plans.validate(plan, layout, "p.toml")
        plans.validate_steps(plan, steps, "p.toml")
    assert len(exc.value.problems) == 1, exc.value.problems
    return exc.value.problems[0]


def test_branch_tables_load_round_trip_and_summarize() -> None:
    plan = plans.loads(SLG + '\n[uncond]\nsteps = "0-2"\n[uncond.order]\ndouble = "0, 2-5"\n')
    assert plan.extra == Branch(orders=(("double", (0, 1, 4, 5)),), steps=(1, 2, 3, 4), scale=2.8)
    assert plan.uncond == Branch(orders=(("double", (0, 2, 3, 4, 5)),), steps=(0, 1, 2), scale=None)
    plans.validate(plan, SD3)
    text = plans.dumps(plan)
    assert text.startswith("version = 2\n") and "[extra]\nscale = 2.8\nsteps = \"1-4\"\n[extra.order]\n" in text
    assert plans.loads(text) == plan
    assert plans.summary(plan) == "uncond at steps 0-2 (double: 0, 2-5); extra x2.8 at steps 1-4 (double: 0-1, 4-5)"
    bare = plans.loads('version = 2\n[order]\ndouble = "0-3, 5"\n[uncond]\n')  # the unconditional pass: full model
    assert bare.uncond == Branch() and not bare.is_identity(SD3)
    assert plans.loads('version = 2\n[uncond]\n').is_identity(SD3)  # both passes run the full model
    assert not plans.loads(SLG).is_identity(SD3)  # an extra pass is never the full model


@pytest.mark.parametrize("text, says", [
    (SLG.replace("scale = 2.8\n", ""), "p.toml: extra.scale: missing (how strongly the pass guides, like 2.8)"),
    (SLG.replace("2.8", '"high"'), "p.toml: extra.scale: expected a number like 2.8, got the string 'high'"),
    (SLG.replace("2.8", "1e9"), "p.toml: extra.scale: must be a finite number within ±100 at '1000000000.0'"),
    # An integer too large for a float (TOML allows it): refused, not an OverflowError (found by the fuzz test).
    (SLG.replace("2.8", "9" * 400), "p.toml: extra.scale: must be a finite number within ±100 at '" + shown("9" * 400)
     + "'"),
    (SLG.replace("version = 2", "version = 1"), "p.toml: extra: [extra] needs version = 2 (this file says version = 1)"),
    (SLG + "[extra.more]\n", "p.toml: extra.more: unknown key (known: scale, steps, order)"),
    (SLG.replace('"0-1, 4-5"', '"0-1, 4-6"'), "p.toml: extra.order.double: block index out of range at '6' "
                                              "('double' has 6 blocks: 0-5)"),
    (SLG.replace('"1-4"', '"1-9"'), "p.toml: extra.steps: step out of range at '8-9' (this run has 8 steps: 0-7)"),
    ('version = 2\n[order]\ndouble = "0, 1-4@reuse, 5"\n[uncond]\n',
     "p.toml: order: cached spans (@reuse, @forecast) cannot be combined with guidance-branch plans ([uncond])"),
    ("version = 2\nuncond = 3\n", "p.toml: uncond: expected a table [uncond], got the integer '3'"),
])
def test_refusals_are_one_line(text: str, says: str) -> None:
    assert problem(text) == says


def test_a_family_without_classifier_free_guidance_refuses_branches() -> None:
    text = 'version = 2\n[extra]\nscale = 2.0\n[extra.order]\nsingle = "0-3"\n'
    assert problem(text, FLUX) == ("p.toml: extra: guidance-branch plans need classifier-free guidance, which flux "
                                   "models do not run")


def test_cost_counts_each_pass_by_its_share_of_the_batch() -> None:
    # tiny-sd3: 6 blocks. Step 0: plain (6). Steps 1-2: the unconditional half runs 4 blocks, the
    # conditional half the default 5: (5 + 4) / 2. Steps 2-3: an extra pass of 3 blocks on the
    # conditional half adds 3 / 2. Outside the branches the default order's 5.
    plan = plans.loads('version = 2\n[order]\ndouble = "0-3, 5"\n[uncond]\nsteps = "1-2"\n[uncond.order]\n'
                       'double = "0-2, 5"\n[extra]\nscale = 1.5\nsteps = "2-3"\n[extra.order]\ndouble = "0-1, 5"\n')
    runs = block_runs(plan, SD3, 5)
    assert [s["double"] for s in runs.per_step] == [5, 4.5, 6.0, 6.5, 5]
    assert runs.total == 27.0 and runs.full_total == 30


def sd3_setup(tiny_generator: Callable[[str], Any], steps: int) -> tuple[Any, Any, dict[str, Any]]:
    generator = tiny_generator("tiny-sd3")
    settings = replace(resolve_settings(generator.loaded.source.defaults), steps=steps, seed=3)
    assert settings.guidance > 1
    embeds, _, _ = generator.embeddings("a cat", settings)
    return generator, settings, embeds


def test_an_extra_pass_is_diffusers_skip_layer_guidance_bit_for_bit(tiny_generator: Callable[[str], Any]) -> None:
    """SD3.5's Skip Layer Guidance through diffusers' own `skip_guidance_layers` (start 0.01, stop 0.5 of
    10 steps: the steps i with 0.1 < i < 5, 1-4) against the plan file above, which skips the same
    blocks on an extra pass of the same steps with the same scale."""
    generator, settings, embeds = sd3_setup(tiny_generator, 10)
    plan = plans.loads(SLG)
    with torch.inference_mode():
        ours = generator.generate("a cat", settings, plan, decode=False).latents
        theirs = generator.pipe(**embeds, num_inference_steps=10, guidance_scale=settings.guidance,
                                width=settings.width, height=settings.height, output_type="latent",
                                generator=torch.Generator("cpu").manual_seed(3), skip_guidance_layers=[2, 3],
                                skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.01,
                                skip_layer_guidance_stop=0.5).images
        plain = generator.generate("a cat", settings, plans.Plan(), decode=False).latents
    assert torch.equal(ours, theirs)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the extra pass did something
    runs = generator.generate("a cat", replace(settings, steps=2), plan.__class__(), decode=False)
    assert runs.block_runs.total == 12  # no branches: whole numbers, as before


def test_branches_need_guidance_above_one(tiny_generator: Callable[[str], Any]) -> None:
    generator, settings, _ = sd3_setup(tiny_generator, 2)
    with pytest.raises(PlanError) as exc:
        generator.generate("a cat", replace(settings, guidance=1.0), plans.loads(SLG), decode=False)
    assert exc.value.problems == ["plan: [extra] apply to classifier-free guidance, which this run does not use "
                                  "(guidance 1; it runs above 1)"]


class HandSplit:
    """The reference: the transformer's forward replaced by hand, each half of the doubled batch run with
    its own block list (a ModuleList swapped in and put back, as a user would), the halves concatenated."""

    def __init__(self, transformer: Any, attr: str, uncond_blocks: list[int] | None, cond_blocks: list[int],
                 steps: set[int]) -> None:
        self.transformer, self.attr = transformer, attr
        self.blocks = getattr(transformer, attr)
        self.uncond, self.cond, self.steps = uncond_blocks, cond_blocks, steps
        self.step = 0
        self.forward = transformer.forward

    def run(self, keep: list[int], *args: Any, **kwargs: Any) -> Any:
        setattr(self.transformer, self.attr, torch.nn.ModuleList([self.blocks[i] for i in keep]))
        try:
            return self.forward(*args, **kwargs)
        finally:
            setattr(self.transformer, self.attr, self.blocks)

    def __call__(self, hidden: torch.Tensor, **kwargs: Any) -> Any:
        step, self.step = self.step, self.step + 1
        if step not in self.steps or self.uncond is None:
            return self.run(self.cond, hidden, **kwargs)
        half = hidden.shape[0] // 2

        def part(s: slice) -> dict[str, Any]:
            return {k: v[s] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == 2 * half else v
                    for k, v in kwargs.items()}

        u = self.run(self.uncond, hidden[:half], **part(slice(0, half)))[0]
        c = self.run(self.cond, hidden[half:], **part(slice(half, None)))[0]
        return (torch.cat([u, c]),)


def test_an_unconditional_pass_plan_is_a_hand_written_split_batch(tiny_generator: Callable[[str], Any]) -> None:
    """AuraFlow (its pipeline passes hidden_states positionally): the plan's order on the conditional
    pass, the full model on the unconditional pass at steps 1-3 (elsewhere both run the plan)."""
    generator = tiny_generator("tiny-auraflow")
    settings = replace(resolve_settings(generator.loaded.source.defaults), steps=5, guidance=5.0, seed=1)
    stack = AURA.stacks[-1]
    keep = [b for b in range(stack.blocks) if b not in (2, 3)]
    plan = plans.loads(f'version = 2\n[order]\n{stack.name} = "{plans.format_order(tuple(keep))}"\n'
                       f'[uncond]\nsteps = "1-3"\n')
    plans.validate(plan, AURA)
    with torch.inference_mode():
        ours = generator.generate("a cat", settings, plan, decode=False).latents
        embeds, _, _ = generator.embeddings("a cat", settings)
        transformer = generator.loaded.transformer
        hand = HandSplit(transformer, stack.attr, list(range(stack.blocks)), keep, {1, 2, 3})
        transformer.forward = hand
        try:
            theirs = generator.pipe(**embeds, num_inference_steps=5, guidance_scale=5.0, width=settings.width,
                                    height=settings.height, output_type="latent",
                                    generator=torch.Generator("cpu").manual_seed(1)).images
        finally:
            del transformer.forward
        whole = generator.generate("a cat", settings, replace(plan, uncond=None), decode=False).latents
    assert hand.step == 5
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.allclose(ours, whole, atol=1e-4)  # the unconditional pass's own plan changed the image


def test_the_readmes_branch_example_is_a_valid_sd3_medium_plan() -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (example,) = [block for block in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[extra]" in block]
    plan = plans.loads(example)
    plans.validate(plan, MODELS["sd3-medium"].layout)
    plans.validate_steps(plan, 28)
    assert plan.extra is not None and plan.extra.scale == 2.8 and plan.extra.order("double") == (
        *range(0, 7), *range(10, 24))


def test_timed_variants_carry_each_steps_branches() -> None:
    """What the engine times side by side: one plan per distinct set of passes, each branch as a branch of
    every step (no window), with the steps that run it; steps without branches are the plain orders."""
    from dit_explore.engine.core.sampling import step_variants

    plan = plans.loads('version = 2\n[order]\ndouble = "0-3, 5"\n[uncond]\nsteps = "1-2"\n[uncond.order]\n'
                       'double = "0-2, 5"\n[extra]\nscale = 1.5\nsteps = "2-3"\n[extra.order]\ndouble = "0-1, 5"\n')
    variants = step_variants(plan, SD3, 5)
    main = (("double", (0, 1, 2, 3, 5)),)
    uncond = Branch(orders=(("double", (0, 1, 2, 5)),))
    extra = Branch(orders=(("double", (0, 1, 5)),), scale=1.5)
    assert [(v.orders, v.uncond, v.extra, n) for v, n in variants] == [
        (main, None, None, 2),  # steps 0 and 4
        (main, uncond, None, 1),  # step 1
        (main, uncond, extra, 1),  # step 2
        (main, None, extra, 1),  # step 3
    ]


def test_a_study_of_a_branch_plan_reports_its_half_executions(tmp_path: Path) -> None:
    """`dit-explore study --plans` with an [uncond] plan on tiny-sd3 at one step: (5 + 6) / 2 = 5.5 block
    executions per image, in results.json and in summary.md."""
    from dit_explore.tui.cli import main

    plan = tmp_path / "uncond.plan.toml"
    plan.write_text('version = 2\nname = "cond only"\n[order]\ndouble = "0-3, 5"\n[uncond]\n')
    assert main(["study", "tiny-sd3", "--plans", str(plan), "--steps", "1", "--prompt", "a cat",
                 "--out", str(tmp_path / "study")]) == 0
    record = json.loads((tmp_path / "study" / "results.json").read_text())
    rows = [r for r in record["rows"] if r["plan"] == "cond only"]
    assert [r["block_executions"] for r in rows] == [5.5]
    assert "| cond only | 5.5 | 1.09× |" in (tmp_path / "study" / "summary.md").read_text()


def test_an_instance_forward_set_before_is_put_back(tiny_generator: Callable[[str], Any]) -> None:
    """accelerate's offload hooks replace a module's forward on the instance: a branch run puts that one
    back, not the class's."""
    generator, settings, _ = sd3_setup(tiny_generator, 3)
    transformer, scheduler = generator.loaded.transformer, generator.pipe.scheduler
    calls: list[int] = []
    plain = transformer.forward

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return plain(*args, **kwargs)

    transformer.forward = hooked
    try:
        with torch.inference_mode():
            generator.generate("a cat", settings, plans.loads(SLG.replace('"1-4"', '"1"')), decode=False)
        assert transformer.__dict__["forward"] is hooked and "step" not in vars(scheduler)
        assert len(calls) == 4  # 3 steps through the hook, and the extra pass on step 1 through it too
    finally:
        del transformer.forward
