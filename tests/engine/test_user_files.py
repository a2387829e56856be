"""Every file the user names is read with a size limit and a type check (hardening item 13): a plan, a
PNG replayed as a plan, a --prompts file, a --from-groups similarity.json, the analysis cache. A FIFO
never blocks, /dev/zero is never read, a nested or huge file is one line (exit 2 in the CLI), never a
traceback; a corrupt cache file is a cache miss.

Whatever could hang or eat memory were a fix undone runs guarded (tests/guarded.py): a thread with a
timeout for FIFOs, a child process with capped memory for /dev/zero.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.similarity import (
    MAX_RESULT_BYTES,
    ResultError,
    SimilarityResult,
    StackResult,
    cache_key,
    cache_path,
    load_cached,
    read_result,
    store_cached,
)
from dit_explore.engine.core.userfiles import UserFileError, read_user_bytes, read_user_text
from dit_explore.engine.headless import MAX_PROMPTS_BYTES
from dit_explore.tui.cli import main
from tests.guarded import cli, in_thread

NESTED_JSON = "[" * 100_000 + "]" * 100_000


def one_error_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err and "\x07" not in err
    (line,) = err.strip().split("\n")
    assert line.startswith(f"{prog}: error: ") and line.isprintable()
    return line.removeprefix(f"{prog}: error: ")


def run_main(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


# ------------------------------------------------------------------------------ read_user_file


def test_a_regular_file_within_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfhello \xc3\xa9")
    assert read_user_bytes(path, limit=11) == b"\xef\xbb\xbfhello \xc3\xa9"
    assert read_user_text(path, limit=11) == "hello é"  # a BOM is not text
    with pytest.raises(UserFileError) as exc:
        read_user_bytes(path, limit=10, what="--thing a.txt", kind="things")
    assert str(exc.value) == "--thing a.txt: 11 bytes; things are at most 10 bytes"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserFileError) as exc:
        in_thread(lambda: read_user_bytes(fifo, limit=100), fifo)
    assert str(exc.value) == f"{fifo}: not a regular file (a FIFO)"


@pytest.mark.parametrize(("make", "words"), [
    (lambda d: Path("/dev/zero"), "not a regular file (a character device)"),
    (lambda d: d, "not a regular file (a folder)"),
    (lambda d: d / "missing", "no such file"),
    (lambda d: d / "file\x00name", "not a file name (embedded null byte)"),
])
def test_what_is_not_a_regular_file_is_one_line(tmp_path: Path, make: Any, words: str) -> None:
    path = make(tmp_path)
    with pytest.raises(UserFileError) as exc:
        read_user_bytes(path, limit=100)
    assert str(exc.value) == f"{str(path).replace(chr(0), chr(92) + 'x00')}: {words}"


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(UserFileError) as exc:
        read_user_bytes(path, limit=100)
    assert str(exc.value) == f"{path}: cannot read: permission denied"


def test_a_file_growing_past_the_limit_while_read_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dit_explore.engine.core.userfiles as userfiles

    path = tmp_path / "grows"
    path.write_bytes(b"x" * 50)
    real = os.fstat

    def looked_at_while_small(fd: int) -> Any:  # as if it had 10 bytes when looked at, 50 when read
        info = real(fd)
        return SimpleNamespace(st_mode=info.st_mode, st_size=10)

    monkeypatch.setattr(userfiles.os, "fstat", looked_at_while_small)
    with pytest.raises(UserFileError) as exc:
        read_user_bytes(path, limit=20)
    assert str(exc.value) == f"{path}: more than 20 bytes; such files are at most 20 bytes"


def test_the_control_characters_of_a_path_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "a\x1b[31mb\nc"
    with pytest.raises(UserFileError) as exc:
        read_user_bytes(path, limit=1)
    assert str(exc.value) == f"{tmp_path}/a\\x1b[31mb\\nc: no such file"


# --------------------------------------------------------------------------- the CLI: --plan


def _files(tmp_path: Path) -> dict[str, Path]:
    texts = {
        "nested.plan.toml": "version = 1\nname = " + "[" * 20_000 + "]" * 20_000 + "\n",
        "tables.plan.toml": "version = 1\nname = " + "{a=" * 10_000 + "1" + "}" * 10_000 + "\n",
        "digits.plan.toml": 'version = 1\n[order]\nsingle = "' + "7" * 5000 + '"\n',
        "tomlint.plan.toml": "version = " + "7" * 5000 + "\n",
        "big.plan.toml": 'version = 1\n[order]\nsingle = "' + "0," * 5_000_000 + '0"\n',
        "range.plan.toml": 'version = 1\n[order]\nsingle = "0-99999999"\n',
        "steps.plan.toml": 'version = 1\nactive_steps = "0-200000000"\n',
        "esc.plan.toml": 'version = 1\n"\\u001b]0;pwned\\u0007" = 1\n',
        "version.plan.toml": 'version = "1\\n2"\n',
        "name.plan.toml": f'version = 1\nname = "{"n" * 1000}"\n',
    }
    out = {}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize(("name", "fragment"), [
    ("nested.plan.toml", "not a plan: arrays or tables nested too deeply"),
    ("tables.plan.toml", "not a plan: arrays or tables nested too deeply"),
    ("digits.plan.toml", "order.single: a block index must be at most 9999 at '7777"),
    ("tomlint.plan.toml", "not valid TOML: a number too long to read"),
    ("big.plan.toml", f"10000033 bytes; plan files are at most {plans.MAX_PLAN_BYTES} bytes"),
    ("range.plan.toml", "order.single: a block index must be at most 9999 at '99999999' (column 3)"),
    ("steps.plan.toml", "active_steps: a step index must be at most 999 at '200000000' (column 3)"),
    ("esc.plan.toml", "\\x1b]0;pwned\\x07: unknown key"),
    ("version.plan.toml", "version: must be the integer 1 or 2, got the string '1\\n2'"),
    ("name.plan.toml", "name: at most 200 characters, got 1000"),
])
@pytest.mark.parametrize("command", ["run", "explorer"])
def test_a_bad_plan_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, name: str, fragment: str,
                                                command: str) -> None:
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(tmp_path / "no-config.toml"))
    path = _files(tmp_path)[name]
    if command == "run":
        assert run_main("run", "tiny-flux", "--plan", str(path), "--out", str(tmp_path / "out")) == 2
        line = one_error_line(capsys, "dit-explore run")
    else:
        assert run_main("tiny-flux", "--plan", str(path)) == 2
        line = one_error_line(capsys, "dit-explore")
    assert line.startswith(f"{path}: ") and fragment in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".plan.toml", ".png"])
@pytest.mark.parametrize("command", ["run", "explorer"])
def test_a_fifo_plan_is_refused_without_blocking(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, suffix: str, command: str) -> None:
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(tmp_path / "no-config.toml"))
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    argv = ["run", "tiny-flux", "--plan", str(fifo), "--out", str(tmp_path / "out")] if command == "run" \
        else ["tiny-flux", "--plan", str(fifo)]
    assert in_thread(lambda: run_main(*argv), fifo) == 2
    line = one_error_line(capsys, "dit-explore run" if command == "run" else "dit-explore")
    assert line == f"{fifo}: not a regular file (a FIFO)"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
@pytest.mark.parametrize("argv", [
    ["run", "tiny-flux", "--plan", "/dev/zero", "--out", "{out}"],
    ["run", "tiny-flux", "--prompts", "/dev/zero", "--out", "{out}"],
    ["tiny-flux", "--plan", "/dev/zero"],
    ["plans", "tiny-flux", "--from-groups", "/dev/zero", "--out", "{out}"],
])
def test_dev_zero_is_never_read(tmp_path: Path, argv: list[str]) -> None:
    """In a child with capped memory: reading /dev/zero to its end would fail there, not eat the machine."""
    done = cli(*[a.format(out=tmp_path / "out") for a in argv], env={"DIT_EXPLORE_CONFIG": str(tmp_path / "none")})
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().split("\n")
    assert line.endswith("/dev/zero: not a regular file (a character device)"), line
    assert line.startswith("dit-explore")


# ------------------------------------------------------------------------------- --prompts


def test_prompts_files_are_bounded_and_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    big = tmp_path / "big.txt"
    big.write_text("a prompt\n" * (MAX_PROMPTS_BYTES // 9 + 1))
    assert run_main("run", "tiny-flux", "--prompts", str(big), "--out", out) == 2
    assert one_error_line(capsys, "dit-explore run") == \
        f"--prompts {big}: {big.stat().st_size} bytes; prompts files are at most {MAX_PROMPTS_BYTES} bytes"

    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)
    assert in_thread(lambda: run_main("run", "tiny-flux", "--prompts", str(fifo), "--out", out), fifo) == 2
    assert one_error_line(capsys, "dit-explore run") == f"--prompts {fifo}: not a regular file (a FIFO)"

    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")
    assert run_main("run", "tiny-flux", "--prompts", str(latin), "--out", out) == 2
    assert one_error_line(capsys, "dit-explore run") == f"--prompts {latin}: not UTF-8 text (byte 3 is 0xe9)"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- --from-groups


def _result(model: str = "tiny-flux") -> SimilarityResult:
    layout = resolve(model).layout
    stacks = {s.name: StackResult(s.blocks, [[1.0] * s.blocks for _ in range(s.blocks)], [(0, s.blocks - 1)])
              for s in layout.stacks}
    order = [(s.name, i) for s in layout.stacks for i in range(s.blocks)]
    n = len(order)
    return SimilarityResult(model, stacks, order, [[1.0] * n for _ in range(n)], [(0, n - 1)], ["p"], 2, 0)


def _bad_results() -> dict[str, Any]:
    good = _result().to_json()
    wrong_matrix = json.loads(json.dumps(good))
    wrong_matrix["stacks"]["single"]["matrix"] = [[1.0]]
    outside = json.loads(json.dumps(good))
    outside["stacks"]["single"]["groups"] = [[0, 99]]
    stacks_list = json.loads(json.dumps(good))
    stacks_list["stacks"] = ["single"]
    not_finite = json.loads(json.dumps(good))
    not_finite["all"]["matrix"][0][0] = float("nan")
    huge = json.loads(json.dumps(good))
    huge["all"]["matrix"][0][0] = 10**400  # JSON allows it; float() of it overflows
    return {
        "nested": (NESTED_JSON, "not a similarity result: nested too deeply"),
        "a list": ("[1, 2]", "expected a JSON object, got list"),
        "not json": ("{", "not JSON (Expecting property name enclosed in double quotes"),
        "no stacks": ("{}", "no 'stacks' in it"),
        "stacks a list": (json.dumps(stacks_list), "the wrong shape (AttributeError"),
        "wrong matrix": (json.dumps(wrong_matrix), "stacks.single.matrix: not 8 x 8 finite numbers"),
        "group outside": (json.dumps(outside), "stacks.single.groups: a group outside blocks 0-7"),
        "nan": (json.dumps(not_finite), "all.matrix: not 12 x 12 finite numbers"),
        "huge integer": (json.dumps(huge), "all.matrix: not 12 x 12 finite numbers"),
        "long int": ('{"stacks": {"s": {"blocks": ' + "9" * 5000 + "}}}", "not JSON (Exceeds the limit"),
    }


@pytest.mark.parametrize("case", list(_bad_results()))
def test_a_bad_similarity_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    text, fragment = _bad_results()[case]
    path = tmp_path / "similarity.json"
    path.write_text(text)
    with pytest.raises(ResultError) as exc:
        read_result(tmp_path)
    assert fragment in str(exc.value) and str(exc.value).isprintable()
    assert run_main("plans", "tiny-flux", "--from-groups", str(tmp_path), "--out", str(tmp_path / "out")) == 2
    line = one_error_line(capsys, "dit-explore plans")
    assert line.startswith(f"--from-groups {tmp_path}: not a similarity result (") and fragment in line
    assert len(line) < 600
    assert not (tmp_path / "out").exists()


def test_from_groups_files_are_bounded_and_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(MAX_RESULT_BYTES + 1)
    assert run_main("plans", "tiny-flux", "--from-groups", str(big), "--out", str(tmp_path / "out")) == 2
    assert one_error_line(capsys, "dit-explore plans") == \
        f"--from-groups {big}: {MAX_RESULT_BYTES + 1} bytes; similarity results are at most {MAX_RESULT_BYTES} bytes"
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert in_thread(lambda: run_main("plans", "tiny-flux", "--from-groups", str(fifo)), fifo) == 2
    assert one_error_line(capsys, "dit-explore plans") == f"--from-groups {fifo}: not a regular file (a FIFO)"
    # a result of another model's shape names both, cut
    other = tmp_path / "other.json"
    data = _result().to_json()
    data["stacks"] = {"s" * 5000: data["stacks"]["double"]}
    other.write_text(json.dumps(data))
    with pytest.raises(ResultError):
        read_result(other)  # its blocks no longer add up to its order


def test_a_good_similarity_json_still_makes_plans(tmp_path: Path) -> None:
    (tmp_path / "similarity.json").write_text(json.dumps(_result().to_json()))
    assert read_result(tmp_path) == _result()
    assert run_main("plans", "tiny-flux", "--from-groups", str(tmp_path), "--out", str(tmp_path / "out")) == 0


# ---------------------------------------------------------------------------- analysis cache


KEY = cache_key(model="tiny-flux", revision="r", prompts=["p"], steps=2, width=64, height=64, seed=0,
                dtype="float32", guidance=0.0)


def _cached(root: Path) -> SimilarityResult:
    result = _result()
    result.key = dict(KEY)
    store_cached(root, result)
    return result


@pytest.mark.parametrize("case", ["nested", "a list", "not json", "wrong matrix", "group outside", "nan", "long int",
                                  "stacks a list"])
def test_a_corrupt_cache_file_is_a_miss(tmp_path: Path, case: str) -> None:
    good = _cached(tmp_path)
    assert load_cached(tmp_path, KEY) == good
    text = _bad_results()[case][0]
    if text.startswith("{") and case not in ("not json", "long int"):
        data = json.loads(text)
        data["key"] = dict(KEY)
        text = json.dumps(data)
    cache_path(tmp_path, KEY).write_text(text)
    assert load_cached(tmp_path, KEY) is None


def test_a_cache_file_that_is_a_fifo_or_too_large_is_a_miss(tmp_path: Path) -> None:
    path = cache_path(tmp_path, KEY)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    assert in_thread(lambda: load_cached(tmp_path, KEY), path) is None
    path.unlink()
    with path.open("wb") as f:
        f.truncate(MAX_RESULT_BYTES + 1)
    assert load_cached(tmp_path, KEY) is None


def test_cached_analysis_measures_again_over_a_corrupt_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """engine/analysis.py's cache flow: a nested cache file is a miss (measured, then overwritten)."""
    import torch

    from dit_explore.engine import analysis
    from dit_explore.engine.core.sampling import Settings

    monkeypatch.setenv("DIT_EXPLORE_CACHE", str(tmp_path))
    settings = Settings(seed=0, steps=2, width=64, height=64, guidance=0.0, max_sequence_length=32)
    generator: Any = SimpleNamespace(loaded=SimpleNamespace(source=SimpleNamespace(name="tiny-flux", kind="tiny"), revision="r",
                                                            dtype=torch.float32, precision="float32"))
    key = analysis.analysis_key(generator.loaded, ["p"], settings)
    measured = _result()
    measured.key = key
    calls = []

    def fake_analyze(gen: Any, prompts: Any, s: Any, **kwargs: Any) -> SimilarityResult:
        calls.append(prompts)
        return measured

    monkeypatch.setattr(analysis, "analyze", fake_analyze)
    path = cache_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text(NESTED_JSON)
    result, cached = analysis.cached_analysis(generator, ["p"], settings)
    assert (result, cached, len(calls)) == (measured, False, 1)
    result, cached = analysis.cached_analysis(generator, ["p"], settings)  # the bad file was replaced
    assert (result, cached, len(calls)) == (measured, True, 1)
