"""The importance overlay's numbers (engine/core/importance.py), from hand-written sweep results: each
block's cost by PSNR (40 dB: 0, 10 dB: 1, linear, clipped; identical: 0), by the other metrics, over
several prompts, with failed items; and every folder it must refuse, in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from dit_explore.engine.core.importance import DEFAULT_METRIC, METRICS, read_importance
from dit_explore.engine.core.layout import Layout, Stack

LAYOUT = Layout("flux", (Stack("double", "transformer_blocks", 2), Stack("single", "single_transformer_blocks", 3)))


def row(series: str, x: int | None, psnr: float | None, *, ssim: float = 0.5, mad: float = 16.0,
        error: str | None = None, identical: bool = False, prompt: str = "a red square",
        all_correct: bool | None = None) -> dict[str, Any]:
    plan = "full model" if series == "full model" else f"{series}: skip {x}"
    return {"plan": plan, "series": series, "x": x, "prompt": prompt, "seed": 0, "error": error,
            "identical": identical, "psnr": psnr, "ssim": ssim, "mad": mad, "ms_ssim": None,
            "all_correct": all_correct, "image": None if error else "images/x.png"}


def sweep_folder(tmp_path: Path, rows: list[dict[str, Any]], *, kind: str = "skip-each", model: str = "tiny-flux",
                 prompts: list[str] | None = None, name: str = "sweep") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    record = {"model": model, "kind": kind, "prompts": prompts or ["a red square"], "seeds": [0],
              "plans": [], "rows": rows, "summary": []}
    (folder / "results.json").write_text(json.dumps(record), encoding="utf-8")
    (folder / "sweep.json").write_text(json.dumps({"model": model, "kind": kind}), encoding="utf-8")
    return folder


FULL = row("full model", None, None, ssim=1.0, mad=0.0, identical=True)
ROWS = [FULL, row("double", 0, 10.0), row("double", 1, 25.0), row("single", 0, None, ssim=1.0, mad=0.0, identical=True),
        row("single", 1, 46.0), row("single", 2, None, error="out of memory (a batch of 1)")]


def test_psnr_costs_by_hand(tmp_path: Path) -> None:
    found = read_importance(sweep_folder(tmp_path, ROWS), "tiny-flux", LAYOUT)
    assert DEFAULT_METRIC == "psnr" and found.metric.name == "psnr"
    double, single = found.stacks["double"], found.stacks["single"]
    assert double[0].cost == 1.0 and double[0].value == 10.0  # 10 dB: the top of the scale
    assert math.isclose(double[1].cost or 0, 0.5) and double[1].value == 25.0  # (40 - 25) / 30
    assert single[0].cost == 0.0 and single[0].value is None and single[0].identical == 1  # identical: no cost
    assert single[1].cost == 0.0 and single[1].value == 46.0  # above 40 dB: clipped to none
    assert single[2].cost is None and single[2].error == "out of memory (a batch of 1)"
    assert double[1].describe(found.metric) == "PSNR 25.0 dB · cost 0.50"
    assert single[0].describe(found.metric) == "identical to the full model · cost 0.00"
    assert single[2].describe(found.metric) == "failed: out of memory (a batch of 1)"
    assert found.legend == ('importance: PSNR drop when the block is left out (40 dB = none … 10 dB = full), '
                            'skip-each sweep of "a red square"')


def test_the_other_metrics(tmp_path: Path) -> None:
    rows = [FULL, row("double", 0, 20.0, ssim=0.25, mad=32.0, all_correct=False),
            row("double", 1, 30.0, ssim=0.9, mad=80.0, all_correct=True),
            *[row("single", k, 30.0) for k in range(3)]]
    folder = sweep_folder(tmp_path, rows)
    ssim = read_importance(folder, "tiny-flux", LAYOUT, "ssim").stacks["double"]
    assert math.isclose(ssim[0].cost or 0, 0.75) and math.isclose(ssim[1].cost or 0, 0.1)
    mad = read_importance(folder, "tiny-flux", LAYOUT, "mad").stacks["double"]
    assert mad[0].cost == 0.5 and mad[1].cost == 1.0  # 32 of 64; 80 clipped
    correct = read_importance(folder, "tiny-flux", LAYOUT, "all_correct").stacks["double"]
    assert correct[0].cost == 1.0 and correct[1].cost == 0.0
    missing = read_importance(folder, "tiny-flux", LAYOUT, "ms_ssim").stacks["double"]
    assert missing[0].cost is None and missing[0].error == "no MS-SSIM in the sweep"
    with pytest.raises(ValueError, match="unknown metric 'lpips': one of psnr, ssim"):
        read_importance(folder, "tiny-flux", LAYOUT, "lpips")
    assert set(METRICS) == {"psnr", "ssim", "ms_ssim", "haarpsi", "mad", "all_correct"}


def test_several_prompts_average_their_costs(tmp_path: Path) -> None:
    rows = [FULL, row("double", 0, 40.0), row("double", 0, 10.0, prompt="b"),  # costs 0 and 1: 0.5
            row("double", 1, 25.0), row("double", 1, None, prompt="b", error="NaN"),  # the failed one is left out
            *[row("single", k, None, identical=True) for k in range(3)]]
    found = read_importance(sweep_folder(tmp_path, rows, prompts=["a red square", "b"]), "tiny-flux", LAYOUT)
    first, second = found.stacks["double"]
    assert first.cost == 0.5 and first.value == 25.0 and first.items == 2
    assert math.isclose(second.cost or 0, 0.5) and second.items == 1
    assert found.legend.endswith('skip-each sweep of "a red square" and 1 more prompt(s)')


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: t / "nowhere", "nowhere: not a folder"),
    (lambda t: (t / "empty").mkdir() or t / "empty", "empty: not a sweep folder (no results.json)"),
    (lambda t: sweep_folder(t, ROWS, kind="skip-middle-n"),
     "sweep: a skip-middle-n sweep; the importance overlay reads skip-each sweeps"),
    (lambda t: sweep_folder(t, ROWS, model="toy-flux"), "sweep: a sweep of toy-flux, not of tiny-flux"),
    (lambda t: sweep_folder(t, ROWS[:3]), "sweep: its blocks (double 2) are not tiny-flux's (double 2, single 3)"),
    (lambda t: sweep_folder(t, [*ROWS, row("single", 7, 20.0)]),
     "sweep: its blocks (double 2, single 8) are not tiny-flux's (double 2, single 3)"),
])
def test_what_is_refused_in_one_line(tmp_path: Path, make: Any, message: str) -> None:
    folder = make(tmp_path)
    with pytest.raises(ValueError) as caught:
        read_importance(folder, "tiny-flux", LAYOUT)
    text = str(caught.value)
    assert text.endswith(message) and "\n" not in text


def test_an_unfinished_or_foreign_results_file(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    (running / "sweep.json").write_text("{}")
    with pytest.raises(ValueError, match="a sweep that has not finished"):
        read_importance(running, "tiny-flux", LAYOUT)
    broken = sweep_folder(tmp_path, ROWS, name="broken")
    (broken / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"results\.json is not JSON"):
        read_importance(broken, "tiny-flux", LAYOUT)
    study = sweep_folder(tmp_path, ROWS, name="study")
    (study / "results.json").write_text(json.dumps({"model": {"name": "tiny-flux"}, "rows": []}))
    with pytest.raises(ValueError, match="not a sweep's"):
        read_importance(study, "tiny-flux", LAYOUT)


def test_plot_and_contact_sheet_when_they_are_there(tmp_path: Path) -> None:
    folder = sweep_folder(tmp_path, ROWS)
    found = read_importance(folder, "tiny-flux", LAYOUT)
    assert found.plot is None and found.contact_sheet is None
    (folder / "plot.png").write_bytes(b"png")
    (folder / "contact_sheet.png").write_bytes(b"png")
    assert found.plot == folder / "plot.png" and found.contact_sheet == folder / "contact_sheet.png"
