"""Every file in saved_plans/ loads and validates against its model's layout, and says what the study says."""

from __future__ import annotations

from pathlib import Path

import pytest

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.plan import Group

ROOT = Path(__file__).resolve().parents[1] / "saved_plans"
FILES = sorted(ROOT.rglob("*.plan.toml"))


def test_each_model_has_the_six_strategies() -> None:
    by_model: dict[str, list[str]] = {}
    for f in FILES:
        by_model.setdefault(f.parent.name, []).append(f.name.split("-", 1)[1].removesuffix(".plan.toml"))
    expected = ["skip-first-block", "skip-middle", "middle-repeat", "reverse", "parallel", "looped-parallel"]
    assert by_model == {model: expected for model in ("auraflow", "flux-schnell", "sd3-medium",
                                                       "toy-flux", "toy-sd3", "toy-auraflow")}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_plan_is_valid_for_its_model(path: Path) -> None:
    plan = plans.load(path)
    assert plan.model == path.parent.name and plan.model in MODELS
    plans.validate(plan, MODELS[plan.model].layout, source=str(path))
    assert plan.name and plan.note
    assert path.read_text().startswith("# ")  # a comment saying which range and why
    assert plans.loads(plans.dumps(plan)) == plan


def test_flux_strategies_expand_to_the_study_orders() -> None:
    """Hand-written expansions of the Flux single-stack plans over the middle range 10-28."""
    head, middle, tail = list(range(10)), list(range(10, 29)), list(range(29, 38))
    expected = {
        "1-skip-first-block": list(range(1, 38)),
        "2-skip-middle": head + tail,
        "3-middle-repeat": head + [19] * 19 + tail,
        "4-reverse": head + middle[::-1] + tail,
        "5-parallel": head + [Group(tuple(middle), 1)] + tail,
        "6-looped-parallel": head + [Group(tuple(middle), 3)] + tail,
    }
    for stem, units in expected.items():
        plan = plans.load(ROOT / "flux-schnell" / f"{stem}.plan.toml")
        assert plan.orders == (("single", tuple(units)),), stem


@pytest.mark.parametrize(("model", "stack", "n"), [("toy-flux", "single", 12), ("toy-sd3", "double", 12),
                                                   ("toy-auraflow", "single", 12)])
def test_toy_strategies_cover_the_same_middle_half_in_each_family(model: str, stack: str, n: int) -> None:
    """Hand-written expansions over blocks 3-8 of each toy's 12-block stack (three kept at either end; in
    toy-sd3 the context-pre-only block 11 stays last), the other stacks untouched."""
    head, middle, tail = [0, 1, 2], list(range(3, 9)), list(range(9, n))
    expected = {
        "1-skip-first-block": list(range(1, n)),
        "2-skip-middle": head + tail,
        "3-middle-repeat": head + [5] * 6 + tail,
        "4-reverse": head + middle[::-1] + tail,
        "5-parallel": head + [Group(tuple(middle), 1)] + tail,
        "6-looped-parallel": head + [Group(tuple(middle), 3)] + tail,
    }
    for stem, units in expected.items():
        plan = plans.load(ROOT / model / f"{stem}.plan.toml")
        assert plan.orders == ((stack, tuple(units)),), stem
        assert plan.model == model
