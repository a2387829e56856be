"""Model families: what each declares holds against the real diffusers classes, and what is not declared
is an error rather than another family's behaviour.

The executor's contract with diffusers: each family's forward iterates its block lists (`for block in
self.transformer_blocks`) once per call and calls each block it gets, with the stream arguments in the
declared order, and each block returns what its stack's BlockIO declares. These tests run every family's
tiny pipeline under a plan of plain blocks with a recording stand-in in each place, so a diffusers
release that changes any of it fails here, loudly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from dit_explore.engine.core.families import BlockIO, BlockLayoutError, FamilyError, all_families, family
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.executor import ParallelGroup, StandIn, applied
from dit_explore.engine.generate import Generator

TINY = {"flux": "tiny-flux", "sd3": "tiny-sd3", "auraflow": "tiny-auraflow"}


def test_the_three_families_are_found_by_listing_their_folder() -> None:
    assert sorted(all_families()) == ["auraflow", "flux", "sd3"]
    assert {f.pipeline_class for f in all_families().values()} == {
        "FluxPipeline", "StableDiffusion3Pipeline", "AuraFlowPipeline"}


def test_an_unknown_family_is_one_clear_error() -> None:
    with pytest.raises(FamilyError) as info:
        family("mochi")
    assert str(info.value) == "unknown model family 'mochi' (known: auraflow, flux, sd3)"


def test_a_layout_of_an_unknown_family_cannot_be_applied() -> None:
    from dit_explore.engine.core.layout import Layout, Stack

    layout = Layout("mochi", (Stack("double", "transformer_blocks", 2),))
    blocks = nn.Module()
    blocks.transformer_blocks = nn.ModuleList([nn.Identity(), nn.Identity()])
    with pytest.raises(FamilyError, match="unknown model family 'mochi'"), applied(blocks, layout, Plan()):
        pass
    assert type(blocks.transformer_blocks) is nn.ModuleList  # the original list is back


def test_a_catalog_entry_of_an_unknown_family_is_refused() -> None:
    from dit_explore.engine.core.catalog import MODELS, ModelSpec, register_model

    with pytest.raises(FamilyError):
        register_model(ModelSpec("mochi-tiny", "mochi", None, {}))
    assert "mochi-tiny" not in MODELS


class _Recorder(StandIn):
    """Stands in for a block: runs it, checks its output against the declared BlockIO, records the call."""

    def __init__(self, block: nn.Module, key: tuple[str, int], io: BlockIO, calls: list[tuple[str, int]]) -> None:
        super().__init__()
        self.block, self.key, self.io, self.calls = block, key, io, calls

    def standing_for(self) -> nn.Module | None:
        return self.block

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        self.io.streams(out, f"{self.key}")  # raises BlockLayoutError if the block changed shape
        self.calls.append(self.key)
        return out


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_forward_loop_runs_exactly_the_plans_blocks_in_order(name: str,
                                                                  tiny_generator: Callable[[str], Generator]) -> None:
    gen = tiny_generator(TINY[name])
    declared = family(name)
    layout = gen.loaded.layout
    calls: list[tuple[str, int]] = []

    def wrap(stack: str, index: int, block: nn.Module) -> nn.Module:
        return _Recorder(block, (stack, index), declared.stack(stack).io, calls)

    # Block 0 left out, block 1 twice, the rest in order: a forward loop that indexed its blocks, cached
    # them elsewhere or stopped at the config's count would run something else.
    plan = Plan()
    for stack in layout.stacks:
        plan = plan.with_order(stack.name, parse_order("1*2" + (f", 2-{stack.last}" if stack.last >= 2 else "")))
    settings = Settings(seed=0, steps=1, width=64, height=64, guidance=gen.loaded.source.defaults.guidance,
                        max_sequence_length=32)
    gen.generate("a contract", settings, plan, wrap=wrap, decode=False)
    expected = [(s.name, i) for s in layout.stacks for i in (1, 1, *range(2, s.blocks))]
    assert calls == expected


@pytest.mark.parametrize("name", sorted(TINY))
def test_declared_stacks_match_the_transformer(name: str, load_tiny: Callable[[str], Any]) -> None:
    """Attribute, block class and the stream arguments' positional order, as declared."""
    loaded = load_tiny(TINY[name])
    declared = family(name)
    assert type(loaded.transformer).__name__ == declared.transformer_class
    assert type(loaded.pipe).__name__ == declared.pipeline_class
    for spec in declared.stacks:
        blocks = getattr(loaded.transformer, spec.attr)
        assert isinstance(blocks, nn.ModuleList) and len(blocks) == loaded.source.transformer_config[spec.count_key]
        assert type(blocks[0]).__name__ == spec.block_class
        parameters = list(inspect.signature(type(blocks[0]).forward).parameters)[1:]
        assert tuple(parameters[: len(spec.io.inputs)]) == spec.io.inputs
    if name == "sd3":  # the last block's text stream ends there: it may only end the stack
        blocks = getattr(loaded.transformer, declared.stacks[0].attr)
        assert [b.context_pre_only for b in blocks] == [False] * 5 + [True] and declared.stacks[0].pre_only_last


class _Returns(nn.Module):
    def __init__(self, value: Callable[[torch.Tensor, torch.Tensor], Any]) -> None:
        super().__init__()
        self.value = value

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        return self.value(hidden_states, encoder_hidden_states)


def test_a_block_that_breaks_its_declared_output_is_an_error_not_a_wrong_average() -> None:
    io = family("flux").stack("double").io
    bare = ParallelGroup([_Returns(lambda h, e: h), _Returns(lambda h, e: h)], 1, io, "double group [0-1]")
    x = torch.ones(1, 2, 3)
    with pytest.raises(BlockLayoutError) as info:
        bare(x, x)
    assert str(info.value) == ("double group [0-1] member 0 returned Tensor, but its family declares "
                               "(encoder_hidden_states, hidden_states); did a diffusers upgrade change the block?")
    triple = ParallelGroup([_Returns(lambda h, e: (e, h, h))] * 2, 1, io, "double group [0-1]")
    with pytest.raises(BlockLayoutError, match="returned a tuple of 3"):
        triple(x, x)


def test_looped_groups_feed_each_declared_stream_back_to_its_argument() -> None:
    """(encoder, hidden) outputs go back as encoder_hidden_states and hidden_states, by keyword or position;
    a one-tensor stack (AuraFlow single) feeds hidden_states alone."""
    io = family("flux").stack("double").io
    step = _Returns(lambda h, e: (e + 1, h * 2))
    for call in (lambda g, h, e: g(h, e), lambda g, h, e: g(hidden_states=h, encoder_hidden_states=e)):
        group = ParallelGroup([step, step], 3, io)
        encoder, hidden = call(group, torch.tensor([1.0]), torch.tensor([10.0]))
        assert (float(encoder), float(hidden)) == (13.0, 8.0)  # e + 3, h * 2**3
    single = family("auraflow").stack("single").io

    class Doubler(nn.Module):
        def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
            return hidden_states * 2 + temb

    out = ParallelGroup([Doubler(), Doubler()], 2, single)(torch.tensor([1.0]), temb=torch.tensor([0.5]))
    assert float(out) == (1.0 * 2 + 0.5) * 2 + 0.5


def test_image_tokens_follow_the_declared_layout() -> None:
    joint = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # 2 text tokens, then 3 image tokens
    single = family("auraflow").stack("single").io
    assert single.image_tokens(joint, 3, "single 0").flatten().tolist() == [2, 3, 4, 7, 8, 9]
    double = family("sd3").stack("double").io
    encoder, hidden = torch.zeros(2, 2, 1), torch.ones(2, 3, 1)
    assert double.image_tokens((encoder, hidden), 3, "double 0") is hidden
