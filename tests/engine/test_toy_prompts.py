"""The toy models know one grammar: runs of them warn, in one line, about words they never saw (and run
anyway); every other model's vocabulary is open, so nothing is said."""

from __future__ import annotations

from pathlib import Path

import pytest

from dit_explore.engine.core.catalog import DEFAULT_MODEL, analysis_prompts, default_prompt, unseen_words
from dit_explore.engine.core.shapes import parse_caption
from dit_explore.tui.cli import main


def test_the_default_model_is_the_trained_toy_with_a_caption_for_a_prompt() -> None:
    assert DEFAULT_MODEL == "toy-flux"
    assert parse_caption(default_prompt("toy-flux")).caption == default_prompt("toy-flux")
    assert all(parse_caption(p) for p in analysis_prompts("toy-sd3", ("general",)))
    assert default_prompt("flux-schnell").startswith("a lighthouse")
    assert analysis_prompts("tiny-flux", ("general",)) == ("general",)


def test_unseen_words_are_named_with_the_grammar() -> None:
    line = unseen_words("toy-auraflow", "a Lighthouse at dusk, a RED circle")
    assert line is not None and "\n" not in line
    assert line.startswith("toy-auraflow never saw 'lighthouse', 'dusk': it draws "
                           "'a {size} {color} {shape} at the {position}'")
    assert "shape circle/square/triangle" in line
    assert unseen_words("toy-flux", "a small blue square at the bottom right") is None
    assert unseen_words("flux-schnell", "a lighthouse at dusk") is None  # an open vocabulary


def test_run_warns_and_still_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main(["run", "toy-flux", "--prompt", "a purple hexagon", "--steps", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: toy-flux never saw 'purple', 'hexagon': it draws" in err
    assert (out / "000.png").is_file()


@pytest.mark.parametrize("model", ["toy-flux", "toy-sd3", "toy-auraflow"])
def test_a_toy_ships_its_default_analysis_and_it_is_what_a_measurement_gives(
        model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import numpy as np
    import torch

    from dit_explore.engine.analysis import SHIPPED_ANALYSIS, cached_analysis
    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.core.similarity import DEFAULT_PROMPTS
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import load

    monkeypatch.setenv("DIT_EXPLORE_CACHE", str(tmp_path / "empty-cache"))
    source = resolve(model)
    generator = Generator(load(source, torch.device("cpu"), torch.float32))
    prompts = analysis_prompts(model, DEFAULT_PROMPTS)
    settings = resolve_settings(source.defaults)
    shipped, cached = cached_analysis(generator, prompts, settings)
    assert cached  # from the package: nothing was measured, and the empty cache stays empty
    assert not (tmp_path / "empty-cache").exists()
    with open(Path(source.location) / SHIPPED_ANALYSIS, encoding="utf-8") as f:
        assert shipped.to_json() == json.load(f)
    measured, cached = cached_analysis(generator, prompts, settings, use_cache=False)
    assert not cached
    for name, stack in measured.stacks.items():
        np.testing.assert_allclose(np.array(stack.matrix), np.array(shipped.stacks[name].matrix), atol=1e-3)
        assert stack.groups == shipped.stacks[name].groups
