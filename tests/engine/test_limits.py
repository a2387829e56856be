"""Stated caps on what one request may ask (steps, sides, prompts) and on the devices this build runs on:
refused before anything loads, one line naming the limit, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.devices import device_problem
from dit_explore.engine.core.sampling import MAX_PROMPTS, check_prompts
from dit_explore.engine.core.text import escape_controls, shown
from dit_explore.tui.cli import main


def cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(("field", "value", "cap"), [("steps", 1001, 1000), ("width", 16400, 16384),
                                                      ("height", 100000, 16384)])
def test_sampling_caps_name_the_limit(field: str, value: int, cap: int) -> None:
    with pytest.raises(plans.PlanError) as caught:
        plans.check_sampling(plans.Sampling(**{field: value}), "--")
    assert caught.value.problems == [f"--{field}: must be at most {cap} at '{value}'"]
    plans.check_sampling(plans.Sampling(**{field: cap}), "--")  # the cap itself is allowed


def test_a_plan_file_cannot_ask_more_than_the_caps() -> None:
    text = 'version = 1\n[sampling]\nsteps = 10000\nwidth = 100000\nprompt = "' + "p" * 10_001 + '"\n'
    with pytest.raises(plans.PlanError) as caught:
        plans.loads(text, "big.plan.toml")
    problems = caught.value.problems
    assert len(problems) == 3
    assert "big.plan.toml: sampling.steps: must be at most 1000" in problems[0]
    assert "big.plan.toml: sampling.width: must be at most 16384" in problems[1]
    assert problems[2] == "big.plan.toml: sampling.prompt: at most 10000 characters, got 10001"


def test_prompt_count_and_length_are_capped() -> None:
    assert check_prompts(["a"] * MAX_PROMPTS, "--prompt") == ("a",) * MAX_PROMPTS
    with pytest.raises(plans.PlanError, match=r"at most 1000 prompts in one run, got 1001"):
        check_prompts(["a"] * (MAX_PROMPTS + 1), "--prompt")
    with pytest.raises(plans.PlanError, match=r"at most 10000 characters, got one of 3145728"):
        check_prompts(["x" * (3 << 20)], "--prompt")


@pytest.mark.parametrize(("args", "expected"), [
    (["--steps", "10000"], "--steps: must be at most 1000 at '10000'"),
    (["--width", "100000", "--height", "100000"], "--width: must be at most 16384 at '100000'"),
    (["--prompt", "y" * 20_000], "--prompt: a prompt may have at most 10000 characters, got one of 20000"),
])
def test_run_refuses_beyond_the_caps_before_loading(args: list[str], expected: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # flux-schnell with random weights would build a 12B model: a refusal after loading would take minutes
    assert cli("run", "flux-schnell", "--random-weights", "--device", "cpu", *args, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert expected in err.splitlines()[0]
    assert "Traceback" not in err and "loading" not in err.lower()
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("device", "expected"), [
    ("mps", "--device mps: dit-explore runs on auto, cpu, cuda, cuda:N, not on mps"),
    ("meta", "--device meta: dit-explore runs on auto, cpu, cuda, cuda:N, not on meta"),
    ("cpu:1", "--device cpu:1: there is one cpu device (use --device cpu)"),
    ("gpu", "--device gpu: not a device (this build runs on auto, cpu, cuda, cuda:N)"),
])
@pytest.mark.parametrize("command", ["run", "analyze", "bench"])
def test_unsupported_devices_are_one_line(command: str, device: str, expected: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "o")] if command != "bench" else []
    model = ["--model", "tiny-flux"] if command == "bench" else ["tiny-flux"]
    assert cli(command, *model, "--device", device, *out) == 2
    err = capsys.readouterr().err.strip()
    why = expected.split(": ", 1)[1]
    assert f"error: argument --device: {why}" in err and "\n" not in err and "Traceback" not in err
    assert device_problem(device) == expected  # the engine's own check (pick_device) says the same


def test_the_explorer_refuses_a_device_before_any_screen(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("tiny-flux", "--device", "mps") == 2
    assert capsys.readouterr().err.strip() == ("dit-explore: error: argument --device: dit-explore runs on auto, cpu, "
                                               "cuda, cuda:N, not on mps (see dit-explore --help)")


def test_echoed_values_cannot_steer_the_terminal() -> None:
    hostile = "a\x1b]0;owned\x07b\nc\x9bd\u202ee"
    assert escape_controls(hostile) == "a\\x1b]0;owned\\x07b\\nc\\x9bd\\u202ee"
    assert all(ch.isprintable() for ch in shown(hostile))
    long = shown("z" * 5000)
    assert long.startswith("z" * 200) and long.endswith("… (5000 characters)") and len(long) < 230


def test_what_cannot_load_back_is_never_saved(tmp_path: Path) -> None:
    # 5000 non-adjacent blocks per stack print as "0, 2, 4, ..." (~5 bytes each): three stacks pass 64 KiB
    spread = tuple(range(0, 10_000, 2))
    plan = plans.Plan(orders=tuple((name, spread) for name in ("a", "b", "c")))
    assert len(plans.dumps(plan).encode()) > plans.MAX_PLAN_BYTES
    with pytest.raises(plans.PlanError, match=r"big\.plan\.toml: .*65536"):
        plans.save(plan, tmp_path / "big.plan.toml")
    with pytest.raises(plans.PlanError, match=r"name: .*200"):
        plans.save(plans.Plan(name="n" * 201), tmp_path / "named.plan.toml")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file
    small = plans.Plan(orders=(("a", spread[:100]),), name="n" * 200)
    assert plans.load(plans.save(small, tmp_path / "ok.plan.toml")) == small


def test_a_guidance_integer_beyond_any_float_is_one_line() -> None:
    with pytest.raises(plans.PlanError) as caught:
        plans.loads("version = 1\n[sampling]\nguidance = " + "9" * 400 + "\n", "g.plan.toml")
    assert caught.value.problems == ["g.plan.toml: sampling.guidance: must be a finite number >= 0 at 'inf'"]
