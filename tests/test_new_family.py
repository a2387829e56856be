"""A fourth model family, added in this one file and nowhere else: a Flux whose stacks are called "joint"
and "solo". Plan, executor, generation, similarity, preview and the layer grid all work for it with no
other edit; and since it is Flux's architecture, weights and tiny pipeline under other names, every
result must equal tiny-flux's under the same plan with the stack names swapped (the independent oracle).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dit_explore.engine.core import catalog, families
from dit_explore.engine.core.catalog import tiny_model
from dit_explore.engine.core.families.base import StackSpec
from dit_explore.engine.core.families.flux import Flux
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.engine.models import Loaded

RENAMED = {"double": "joint", "single": "solo"}


class Relabeled(Flux):
    """Flux's blocks, declared under other stack names (and another family name)."""

    name = "flux-relabeled"
    stacks = tuple(StackSpec(RENAMED[s.name], s.attr, s.count_key, s.default_count, s.block_class, s.io)
                   for s in Flux.stacks)


@pytest.fixture(scope="module")
def relabeled() -> Iterator[str]:
    families.register(Relabeled())
    catalog.register_model(tiny_model("tiny-relabeled", families.family("flux-relabeled"), "a test family"))
    yield "tiny-relabeled"
    catalog.MODELS.pop("tiny-relabeled")
    families._REGISTRY.pop("flux-relabeled")


def plan_pair() -> tuple[Plan, Plan]:
    """The same plan for tiny-flux and for the relabeled family."""
    orders = {"double": "0, 2-3", "single": "0-1, [2-4]x2, 7-5"}
    flux, other = Plan(), Plan()
    for name, text in orders.items():
        flux = flux.with_order(name, parse_order(text))
        other = other.with_order(RENAMED[name], parse_order(text))
    return flux, other


def test_the_new_family_resolves_and_validates_plans_by_its_own_stack_names(relabeled: str) -> None:
    from dit_explore.engine.core import plan as plans

    source = resolve(relabeled)
    assert source.family == "flux-relabeled" and source.layout.names == ("joint", "solo")
    assert source.layout.describe() == "joint 4, solo 8"
    _, plan = plan_pair()
    plans.validate(plan, source.layout)
    with pytest.raises(plans.PlanError, match="unknown stack 'single'"):
        plans.validate(Plan().with_order("single", (0,)), source.layout)


def test_generation_similarity_and_preview_equal_fluxs_under_renamed_stacks(
        relabeled: str, load_tiny: Callable[[str], Loaded]) -> None:
    from dit_explore.engine.analysis import analyze
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.preview import preview_image

    flux_plan, new_plan = plan_pair()
    results = {}
    for name, plan in (("tiny-flux", flux_plan), (relabeled, new_plan)):
        loaded = load_tiny(name)
        generator = Generator(loaded)
        settings = resolve_settings(loaded.source.defaults)
        previews: list[np.ndarray] = []

        def on_step(done: int, total: int, latents: torch.Tensor, loaded=loaded, settings=settings,  # type: ignore[no-untyped-def]
                    previews=previews) -> None:
            family = loaded.family
            spatial = family.spatial_latents(loaded.pipe, latents, settings.width, settings.height)
            previews.append(np.asarray(preview_image(family, spatial)))

        image = generator.generate("a renamed lighthouse", settings, plan, on_step=on_step).image
        similarity = analyze(generator, ["a renamed lighthouse"], settings)
        results[name] = (np.asarray(image), previews, similarity, loaded)
    flux_image, flux_previews, flux_similarity, _ = results["tiny-flux"]
    new_image, new_previews, new_similarity, new_loaded = results[relabeled]
    assert new_loaded.revision.startswith("tiny-build-") and new_loaded.family.name == "flux-relabeled"
    assert np.array_equal(new_image, flux_image)  # bit for bit: same weights, same blocks, same order
    assert len(new_previews) == 2 and all(np.array_equal(a, b) for a, b in zip(new_previews, flux_previews))
    assert list(new_similarity.stacks) == ["joint", "solo"]
    assert new_similarity.order == [(RENAMED[s], i) for s, i in flux_similarity.order]
    assert new_similarity.matrix == flux_similarity.matrix
    assert new_similarity.stacks["solo"].groups == flux_similarity.stacks["single"].groups


def test_the_layer_grid_draws_the_new_stacks_with_colors_by_position(relabeled: str, tmp_path: Path) -> None:
    import textual_image.widget  # noqa: F401 - as the CLI does before the app runs

    from dit_explore.tui.app import ExplorerApp
    from dit_explore.tui.widgets.layer_grid import LayerGrid
    from tests.tui.stub_engine import StubEngine

    source = resolve(relabeled)
    app = ExplorerApp(source, graphics="halfcell", plans_dir=tmp_path / "plans", runs_dir=tmp_path / "runs",
                      engine_factory=lambda: StubEngine(source))

    unanalyzed = LayerGrid(source.layout, Plan())  # before any analysis: colored by stack
    before = [unanalyzed.group_of("joint", 0), unanalyzed.group_of("solo", 0)]

    async def scenario() -> tuple[list[str], list[tuple[str, str]]]:
        async with app.run_test(size=(120, 40)) as pilot:
            grid = app.query_one(LayerGrid)
            await pilot.press("down", "s")  # skip solo block 0: the grid's edits work on the new names
            deadline = asyncio.get_running_loop().time() + 30
            while app.session.similarity is None:  # the stub engine's analysis recolors by groups
                assert asyncio.get_running_loop().time() < deadline
                await pilot.pause(0.05)
            await pilot.pause()
            after = [grid.group_of("solo", 0), grid.group_of("solo", 7)]
            lines = [grid.render_line(y).text for y in range(grid.size.height)]
            return lines, after

    lines, after = asyncio.run(scenario())
    assert before == [("J", "stack-1"), ("S", "stack-2")]  # initial and position, not a name lookup
    assert after[0] == ("F", "group-first") and after[1] == ("L", "group-last")
    text = "\n".join(lines)
    assert "joint  4 blocks · unchanged" in text and "solo  8 blocks · edited" in text
    assert app.plan.order("solo") == tuple(range(1, 8))
