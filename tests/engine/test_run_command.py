"""`dit-explore run` end to end on the tiny models: outputs, replay, and every bad-input path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dit_explore.engine.core import plan as plans
from dit_explore.tui.cli import main

SKIP_MIDDLE = """\
version = 1
model = "tiny-flux"
name = "single: skip 2-5"
[order]
single = "0-1, 6-7"
[sampling]
prompt = "a plan prompt"
seed = 5
"""


def run_cli(*args: str) -> int:
    """The CLI in-process; argparse's own errors exit through SystemExit, which we turn into the code."""
    try:
        return main(["run", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_run_writes_images_run_json_and_replayable_pngs(tmp_path: Path) -> None:
    plan_file = tmp_path / "skip.plan.toml"
    plan_file.write_text(SKIP_MIDDLE)
    out = tmp_path / "out"
    assert run_cli("tiny-flux", "--plan", str(plan_file), "--prompt", "a red cube", "--prompt", "a blue ball",
                   "--steps", "3", "--out", str(out)) == 0
    assert leftovers(tmp_path) == ["out", "skip.plan.toml"]  # no staging folder left
    run = json.loads((out / "run.json").read_text())
    assert run["images"] == ["000.png", "001.png"]
    assert run["prompts"] == ["a red cube", "a blue ball"]
    assert run["plan"]["orders"] == {"double": "0-3", "single": "0-1, 6-7"}
    assert run["plan"]["identity"] is False
    # plan file seed 5 wins over the default; the command line's --steps wins over the plan's (none)
    assert run["sampling"] == {"seed": 5, "steps": 3, "width": 64, "height": 64, "guidance": 0.0,
                               "max_sequence_length": 32}
    assert run["model"]["layout"]["stacks"][1] == {"name": "single", "attr": "single_transformer_blocks",
                                                   "blocks": 8, "pre_only_last": False}
    assert run["block_runs"]["per_step"] == [{"double": 4, "single": 4}] * 3
    assert (run["block_runs"]["total"], run["block_runs"]["full_total"]) == (24, 36)
    for image_timing in run["timing"]["per_image"]:
        assert len(image_timing["transformer_steps"]) == 3
        assert all(t > 0 for t in image_timing["transformer_steps"])
        assert image_timing["decode"] > 0
    assert run["timing"]["per_image"][1]["text_encode_cached"] is False  # a different prompt
    assert run["device"] == "cpu" and run["dtype"] == "float32"
    assert {"python", "torch", "diffusers", "transformers"} <= set(run["versions"])

    # Each PNG carries its plan with the sampling that made it...
    stored = plans.load(out / "001.png")
    assert stored.order("single") == plans.parse_order("0-1,6-7")
    assert stored.sampling == plans.Sampling(prompt="a blue ball", seed=5, steps=3, width=64, height=64, guidance=0.0)
    assert stored.model == "tiny-flux"
    # ...so replaying the PNG reproduces it exactly.
    replay = tmp_path / "replay"
    assert run_cli("tiny-flux", "--plan", str(out / "001.png"), "--out", str(replay)) == 0
    assert np.array_equal(np.asarray(Image.open(replay / "000.png")), np.asarray(Image.open(out / "001.png")))
    assert json.loads((replay / "run.json").read_text())["prompts"] == ["a blue ball"]


PER_STEP = """\
version = 2
model = "tiny-flux"
[order]
single = "0-1, 6-7"
[[steps]]
steps = "0"
[steps.order]
double = "3-0"
[[steps]]
steps = "2"
[steps.order]
"""


def test_a_per_step_plan_runs_records_its_tables_and_replays_from_its_png(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = tmp_path / "steps.plan.toml"
    plan_file.write_text(PER_STEP)
    out = tmp_path / "out"
    assert run_cli("tiny-flux", "--plan", str(plan_file), "--prompt", "a red cube", "--steps", "3", "--out", str(out)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["plan"]["orders"] == {"double": "0-3", "single": "0-1, 6-7"}  # the default order
    assert run["plan"]["step_orders"] == [{"steps": "0", "orders": {"double": "3-0", "single": "0-1, 6-7"}},
                                          {"steps": "2", "orders": {"double": "0-3", "single": "0-7"}}]
    assert run["plan"]["identity"] is False and run["plan"]["text"].startswith("version = 2\n")
    assert run["block_runs"]["per_step"] == [{"double": 4, "single": 4}, {"double": 4, "single": 4},
                                             {"double": 4, "single": 8}]
    assert (run["block_runs"]["total"], run["block_runs"]["full_total"]) == (28, 36)
    # The PNG carries the version-2 text: it loads to the plan, with the sampling that made the image...
    with Image.open(out / "000.png") as image:
        assert image.info[plans.PNG_PLAN_KEY].split("\n").count("[[steps]]") == 2
    stored = plans.load(out / "000.png")
    assert stored.step_orders == plans.loads(PER_STEP).step_orders and stored.orders == plans.loads(PER_STEP).orders
    assert stored.sampling == plans.Sampling(prompt="a red cube", seed=0, steps=3, width=64, height=64, guidance=0.0)
    # ...and replaying it reproduces the image exactly.
    replay = tmp_path / "replay"
    assert run_cli("tiny-flux", "--plan", str(out / "000.png"), "--out", str(replay)) == 0
    assert np.array_equal(np.asarray(Image.open(replay / "000.png")), np.asarray(Image.open(out / "000.png")))
    # A step table past the run's steps is refused in one line before anything runs.
    capsys.readouterr()
    assert run_cli("tiny-flux", "--plan", str(plan_file), "--steps", "2", "--out", str(tmp_path / "short")) == 2
    assert not (tmp_path / "short").exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(f"{plan_file}: steps[1].steps: step out of range at '2' (this run has 2 steps: 0-1)")


def test_prompts_file_gives_one_image_per_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\n  second prompt  \nthird\n")
    out = tmp_path / "out"
    assert run_cli("tiny-auraflow", "--prompts", str(prompts), "--out", str(out)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["prompts"] == ["first prompt", "second prompt", "third"]
    assert run["images"] == ["000.png", "001.png", "002.png"]
    assert all(Image.open(out / name).size == (64, 64) for name in run["images"])


def test_plan_runs_on_sd3_and_auraflow(tmp_path: Path) -> None:
    plan_file = tmp_path / "p.plan.toml"
    plan_file.write_text('version = 1\n[order]\ndouble = "0, [1-3]x2, 4, 5"\n')
    assert run_cli("tiny-sd3", "--plan", str(plan_file), "--out", str(tmp_path / "sd3")) == 0
    run = json.loads((tmp_path / "sd3" / "run.json").read_text())
    assert run["block_runs"]["per_step"][0] == {"double": 9}
    assert run["sampling"]["guidance"] == 7.0


def test_different_images_for_different_plans(tmp_path: Path) -> None:
    plan_file = tmp_path / "rev.plan.toml"
    plan_file.write_text('version = 1\n[order]\nsingle = "7-0"\n')
    assert run_cli("tiny-flux", "--out", str(tmp_path / "a")) == 0
    assert run_cli("tiny-flux", "--plan", str(plan_file), "--out", str(tmp_path / "b")) == 0
    a = np.asarray(Image.open(tmp_path / "a" / "000.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "b" / "000.png"), dtype=np.int16)
    assert (a != b).any(axis=-1).mean() > 0.2  # a fifth of the pixels or more changed


BAD_INPUTS = [
    (["tiny-flux", "--plan", "{bad_plan}"], "order.single: block index out of range at '8-9'"),
    (["tiny-flux", "--plan", "{missing}"], "no such file"),
    (["tiny-flux", "--prompts", "{missing}"], "--prompts"),
    (["tiny-flux", "--prompts", "{empty}"], "no prompts in it"),
    (["tiny-flux", "--prompt", "  "], "must not be empty"),
    (["tiny-flux", "--width", "60"], "width 60 is not a multiple of 8"),
    (["tiny-sd3", "--height", "512"], "larger than tiny-sd3 supports (256)"),
    (["tiny-flux", "--steps", "0"], "--steps: must be at least 1"),
    (["no-such-model"], "unknown model 'no-such-model'"),
    (["tiny-flux", "--dtype", "int8"], "invalid choice"),
    (["tiny-flux", "--device", "cuda"], "no CUDA device"),
    (["tiny-flux", "--plan", "{steps_plan}", "--steps", "2"], "active_steps: step out of range at '2-3'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: list[str], message: str) -> None:
    if "--device" in args and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    files = {
        "bad_plan": tmp_path / "bad.plan.toml",
        "missing": tmp_path / "missing.txt",
        "empty": tmp_path / "empty.txt",
        "steps_plan": tmp_path / "steps.plan.toml",
    }
    files["bad_plan"].write_text('version = 1\n[order]\nsingle = "0-9"\n')
    files["empty"].write_text("\n\n")
    files["steps_plan"].write_text('version = 1\nactive_steps = "0-3"\n[order]\nsingle = "0"\n')
    before = leftovers(tmp_path)
    out = tmp_path / "out"
    argv = [a.format(**files) for a in args] + ["--out", str(out)]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
    assert "Traceback" not in err[0]
    assert leftovers(tmp_path) == before  # nothing written, no staging folder


def test_refuses_a_non_empty_out_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run_cli("tiny-flux", "--out", str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert leftovers(out) == ["keep.txt"]
    # --overwrite replaces only a dit-explore run folder (one with run.json), never a folder of the user's
    assert run_cli("tiny-flux", "--out", str(out), "--overwrite") == 2
    assert "has no run.json, so it is not a dit-explore run folder" in capsys.readouterr().err
    assert leftovers(out) == ["keep.txt"]
    (out / "keep.txt").rename(out / "run.json")
    assert run_cli("tiny-flux", "--out", str(out), "--overwrite") == 0
    assert leftovers(out) == ["000.png", "run.json"]
    assert leftovers(tmp_path) == ["out"]


def test_interrupted_run_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dit_explore.engine.generate import Generator

    real = Generator.generate
    calls = [0]

    def interrupt_second(self: Generator, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Generator, "generate", interrupt_second)
    assert run_cli("tiny-flux", "--prompt", "one", "--prompt", "two", "--out", str(tmp_path / "out")) == 130
    assert leftovers(tmp_path) == []


def test_plan_for_another_model_warns_but_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = tmp_path / "p.plan.toml"
    plan_file.write_text('version = 1\nmodel = "tiny-sd3"\n[order]\ndouble = "0-2"\n')
    assert run_cli("tiny-flux", "--plan", str(plan_file), "--out", str(tmp_path / "out")) == 0
    assert "written for tiny-sd3; running it on tiny-flux" in capsys.readouterr().err


def test_console_script_reports_bad_plan_without_traceback(tmp_path: Path) -> None:
    """The real entry point, in a fresh process: one line per problem, exit 2."""
    plan_file = tmp_path / "bad.plan.toml"
    plan_file.write_text('version = 3\n[order]\nsingle = "0-3,[4,4]"\nfoo = "1"\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", "from dit_explore.tui.cli import entry; entry()", "run", "tiny-flux",
                           "--plan", str(plan_file), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 2  # the version, and the duplicate group member (foo is checked after parsing)
    assert "version: unsupported version at '3'" in lines[0]
    assert "order.single: block 4 appears twice in a parallel group" in lines[1]
    assert not (tmp_path / "out").exists()
