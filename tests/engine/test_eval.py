"""`dit-explore eval` on the random-weight tiny-flux (its images are noise, so it must score at chance),
against expectations computed here: the caption selection, the seed rule, the report's counts, the plan's
block executions, and the reading of the very image `dit-explore run` makes with the same settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine import headless
from dit_explore.engine.core.shapes import CAPTIONS, Attributes, parse_caption, read_back, render
from dit_explore.engine.eval import for_scoring, selected
from dit_explore.tui.cli import main

SKIP_SINGLE_2_5 = 'version = 1\nmodel = "tiny-flux"\n[order]\nsingle = "0-1, 6-7"\n'
REPORT_KEYS = {"model", "plan", "prompts", "sampling", "device", "dtype", "quantization", "placement", "versions", "seeds",
               "limit", "scored_at", "scores", "seconds_per_image", "block_runs", "images"}


def cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def test_limit_takes_the_first_captions_by_sha256_in_caption_order() -> None:
    by_hash = sorted(CAPTIONS, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    twelve = selected(12)
    assert [CAPTIONS[i] for i in twelve] == [c for c in CAPTIONS if c in by_hash[:12]]
    assert selected(None) == list(range(324)) and sorted(selected(324)) == list(range(324))


def test_a_larger_image_is_box_scaled_to_the_scorers_size() -> None:
    attrs = Attributes("small", "cyan", "triangle", "top right")
    image = Image.fromarray(render(attrs, size=256, jitter=(-0.5, 0.8), background=(20, 5, 30)))
    pixels = for_scoring(image.convert("RGBA"))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    reading = read_back(pixels)
    assert (reading.size, reading.color, reading.shape, reading.position) == ("small", "cyan", "triangle", "top right")


def test_eval_on_noise_scores_at_chance_and_reports_what_it_ran(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "skip.plan.toml"
    plan.write_text(SKIP_SINGLE_2_5)
    out = tmp_path / "deep" / "eval.json"
    assert cli("eval", "tiny-flux", "--limit", "12", "--steps", "2", "--seed", "3", "--plan", str(plan),
               "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS
    indices = selected(12)
    assert [im["index"] for im in report["images"]] == indices
    assert [im["caption"] for im in report["images"]] == report["prompts"] == [CAPTIONS[i] for i in indices]
    assert [im["seed"] for im in report["images"]] == [3 + i for i in indices]
    assert report["limit"] == 12 and report["sampling"]["steps"] == 2

    # every image's verdict follows from its reading and caption; the totals from the verdicts
    names = ("size", "color", "shape", "position")
    for im in report["images"]:
        wanted = parse_caption(im["caption"])
        expected = {n: im["reading"][n] == getattr(wanted, n) for n in names}
        assert im["correct"] == {**expected, "all": all(expected.values())}
    scores = report["scores"]
    assert scores["n"] == 12
    assert scores["correct"] == {n: sum(im["correct"][n] for im in report["images"]) for n in (*names, "all")}
    assert scores["correct"]["all"] <= 1  # noise: chance is 12/324 of one image
    assert scores["chance"]["position"] == pytest.approx(1 / 9)

    # tiny-flux has 4 double and 8 single blocks; the plan runs 4 + 4 of them, at each of the 2 steps
    assert report["block_runs"] == {"per_image": 16, "full_per_image": 24, "predicted_speedup": 1.5}
    assert report["plan"]["orders"]["single"] == "0-1, 6-7"
    seconds = report["seconds_per_image"]
    assert seconds["mean"] == pytest.approx(sum(im["seconds"] for im in report["images"]) / 12)

    printed = capsys.readouterr().out
    assert f"all           {scores['correct']['all']}/12" in printed
    assert "block executions per image: 16 of the full model's 24, predicted speedup 1.50x" in printed

    # The same caption, seed and plan through `dit-explore run` gives the image eval read.
    first = report["images"][0]
    run_dir = tmp_path / "run"
    assert cli("run", "tiny-flux", "--prompt", first["caption"], "--seed", str(first["seed"]), "--steps", "2",
               "--plan", str(plan), "--out", str(run_dir)) == 0
    reading = read_back(for_scoring(Image.open(run_dir / "000.png")))
    assert {n: getattr(reading, n) for n in names} == first["reading"]


@pytest.mark.parametrize(("args", "message"), [
    (["--plan", "{bad_plan}"], "order.single: block index out of range at '8-9'"),
    (["--limit", "0"], "--limit 0: must be between 1 and 324"),
    (["--limit", "325"], "--limit 325: must be between 1 and 324"),
    (["--seed", str(2**63 - 1)], "caption i runs with seed + i"),
    (["--steps", "0"], "steps"),
    (["--json", "{folder}"], "not a file path"),
])
def test_bad_input_is_one_line_exit_2_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                     message: str) -> None:
    def no_load(*_args: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(headless, "_load", no_load)
    bad_plan = tmp_path / "bad.plan.toml"
    bad_plan.write_text('version = 1\n[order]\nsingle = "0-9"\n')
    argv = [a.format(bad_plan=bad_plan, folder=tmp_path) for a in args]
    assert cli("eval", "tiny-flux", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("dit-explore eval: error:") and message in err[0], err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.plan.toml"]

