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
