"""Files and folders: where `run` and `analyze` write, and what is left when something goes wrong.

- a full disk (ENOSPC, injected into the writers, and a real 2 MiB tmpfs) or any other OSError while
  writing: an OSError naming the file, no temporary file left, the last good run.json kept;
- temporary files are made with mkstemp: a planted `.NAME.tmp` symlink redirects nothing;
- two runs committing to one --out: the second never replaces the first (its output is kept in out-2,
  said in one line); --overwrite replaces only a folder of its kind (run.json, similarity.json);
- output problems that can be seen before the model loads are one line, exit 2, nothing loaded, nothing
  written (a parent that is a file, a dangling symlink, a read-only filesystem, --out . or above);
- SIGTERM and SIGHUP stop a run like ctrl+c; a SIGKILLed run's staging folder is swept by the next run,
  only where its owner marker proves the owner dead on this host;
- a run.json left "running" by an engine that died reads back as crashed.

Real model runs (tiny-flux on CPU) are few: the refusals happen before loading (and `_load` is made to
fail the test if called).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dit_explore.engine import headless
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core import runs
from dit_explore.engine.core.protocol import Status
from dit_explore.engine.core.runs import (
    OWNER_FILE,
    LiveRun,
    OutputError,
    RunWriter,
    StagedDirectory,
    check_destination,
    list_runs,
    owner_dead,
    owner_marker,
    process_start,
    read_run,
    sweep_stale,
    write_atomic,
)
from dit_explore.tui.cli import main

REPO = Path(__file__).resolve().parents[2]
PLAN = plans.Plan()


def cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def every_file(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def image(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (8, 8), color)


def color_of(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as im:
        pixel = im.convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return (pixel[0], pixel[1], pixel[2])


def one_error_line(capsys: pytest.CaptureFixture[str], command: str = "run") -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"dit-explore {command}:")]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model must not load: a refusal that comes after loading fails the test."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(headless, "_load", refuse)


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `where` (root only); the test is skipped where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(folder: Path, leave_pages: int) -> Path:
    """A filler file that leaves `leave_pages` free blocks on `folder`'s filesystem."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * ((st.f_bavail - leave_pages) * st.f_frsize))
    assert os.statvfs(folder).f_bavail == leave_pages
    return filler


class FailingOs(types.ModuleType):
    """runs.py's `os`, with os.write failing with ENOSPC for files whose name contains `marker` (the open
    file's path, as /proc/self/fd tells): a full disk, injected into the writers only."""

    def __init__(self, marker: str) -> None:
        super().__init__("os")
        self.marker = marker
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.marker in os.readlink(f"/proc/self/fd/{fd}"):
            self.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], FailingOs]:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")

    def arm(marker: str) -> FailingOs:
        failing = FailingOs(marker)
        monkeypatch.setattr(runs, "os", failing)
        return failing

    return arm


RECORD = {"model": {"name": "tiny-flux"}, "plan": {"name": None, "text": plans.dumps(PLAN), "orders": {}},
          "prompts": ["a boat"], "sampling": {"seed": 1}}


# ------------------------------------------------------------------------------------------ 3. writers


def test_a_failed_write_leaves_no_temp_file_and_the_old_file(tmp_path: Path,
                                                              disk_full: Callable[[str], FailingOs]) -> None:
    target = tmp_path / "run.json"
    target.write_text("old")
    failing = disk_full("run.json")
    with pytest.raises(OSError) as caught:
        write_atomic(target, b"new")
    assert failing.failed == 1
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert "No space left on device" in str(caught.value)
    assert listing(tmp_path) == ["run.json"] and target.read_text() == "old"


def test_live_run_on_a_full_disk_keeps_the_last_good_record(tmp_path: Path,
                                                            disk_full: Callable[[str], FailingOs]) -> None:
    live = LiveRun(tmp_path / "run", RECORD)
    live.add_png(b"first", 0)
    before = (tmp_path / "run" / "run.json").read_text()
    disk_full("run.json")  # the PNG is written, its run.json update is not
    with pytest.raises(OSError) as caught:
        live.add_png(b"second", 1)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "run" / "run.json")
    with pytest.raises(OSError):
        live.update(status=Status.ERROR.value)
    assert listing(tmp_path / "run") == ["000.png", "001.png", "run.json"]  # no temporary file
    assert (tmp_path / "run" / "run.json").read_text() == before
    assert live.record["images"] == ["000.png"] and live.record["status"] == "running"
    runs.os = os  # the disk has room again: the engine serves on, and so does this run
    live.update(status=Status.ERROR.value)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "error"


def test_a_real_full_tmpfs(tmp_path: Path) -> None:
    """ENOSPC from the kernel: a 2 MiB tmpfs with two free pages. A PNG of 64x64 noise does not fit."""
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    png = runs.png_bytes(noise, PLAN)
    assert len(png) > 3 * 4096
    with tmpfs(tmp_path / "small", "size=2m") as small:
        filler = fill(small, leave_pages=2)
        live = LiveRun(small / "live", RECORD)
        with pytest.raises(OSError) as caught:
            live.add_png(png, 0)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(small / "live" / "000.png")
        assert every_file(small) == ["filler", "live", "live/run.json"]  # no temporary file
        assert read_run(small / "live").images == ()

        writer = RunWriter(small / "out")  # its staging folder and owner marker fit
        with pytest.raises(OSError) as caught:
            writer.add_image(noise, PLAN)
        assert caught.value.errno == errno.ENOSPC
        writer.abort()
        assert every_file(small) == ["filler", "live", "live/run.json"]

        filler.unlink()  # room again: the same run goes on
        live.add_png(png, 0)
        assert read_run(small / "live").images == ("000.png",)


def test_temp_files_cannot_be_redirected_by_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    live = LiveRun(out, RECORD)
    for name in ("000.png", "run.json"):  # the names the old writer used for its temporary files
        (out / f".{name}.tmp").symlink_to(victim)
    live.add_png(b"png bytes", 0)
    assert victim.read_text() == "precious"
    assert (out / "000.png").read_bytes() == b"png bytes" and not (out / "000.png").is_symlink()
    assert read_run(out).images == ("000.png",)
    assert oct((out / "000.png").stat().st_mode & 0o777) == oct(0o666 & ~runs._umask())  # an ordinary file


# ------------------------------------------------------------------------------------------ 9. commits


@pytest.mark.parametrize("first", ["a", "b"])
def test_two_runs_into_one_out_never_replace_each_other(tmp_path: Path, first: str) -> None:
    tmp_path = tmp_path.resolve()  # messages name the real folder
    out = tmp_path / "out"
    writers = {"a": RunWriter(out), "b": RunWriter(out)}  # both checked while --out was free
    colors = {"a": (255, 0, 0), "b": (0, 0, 255)}
    for key, writer in writers.items():
        writer.add_image(image(colors[key]), PLAN)
    second = "b" if first == "a" else "a"
    assert writers[first].commit_run({**RECORD, "prompts": [first]}) == out
    with pytest.raises(OutputError) as caught:
        writers[second].commit_run({**RECORD, "prompts": [second]})
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"--out {out}: was created meanwhile (by another run?) and is not replaced without "
                       f"--overwrite; this run is in {tmp_path / 'out-2'}")
    assert listing(tmp_path) == ["out", "out-2"]  # nothing hidden left
    assert read_run(out).prompts == (first,) and color_of(out / "000.png") == colors[first]
    assert read_run(tmp_path / "out-2").prompts == (second,)
    assert color_of(tmp_path / "out-2" / "000.png") == colors[second]
    assert listing(out) == listing(tmp_path / "out-2") == ["000.png", "run.json"]


def test_overwrite_replaces_only_a_folder_of_its_kind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "old.png").write_text("old")
    a, b = RunWriter(out, overwrite=True), RunWriter(out, overwrite=True)
    a.add_image(image((1, 1, 1)), PLAN)
    b.add_image(image((2, 2, 2)), PLAN)
    a.commit_run(RECORD)
    b.commit_run(RECORD)  # a's run is a run: --overwrite replaces it
    assert listing(tmp_path) == ["out"] and listing(out) == ["000.png", "run.json"]
    assert color_of(out / "000.png") == (2, 2, 2)

    # A folder of the user's appears at --out between the check and the commit: never replaced.
    c = RunWriter(out, overwrite=True)
    c.add_image(image((3, 3, 3)), PLAN)
    os.rename(out, tmp_path / "moved")
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(OutputError, match=r"is now a folder without run\.json, which --overwrite never replaces; "
                                          r"this run is in .*/out-2$"):
        c.commit_run(RECORD)
    assert listing(out) == ["thesis.tex"] and listing(tmp_path / "out-2") == ["000.png", "run.json"]
    assert listing(tmp_path) == ["moved", "out", "out-2"]

    # Each kind has its marker: an analysis folder is not a run folder, and the other way round.
    with pytest.raises(OutputError, match=r"has no run\.json, so it is not a dit-explore run folder"):
        RunWriter(tmp_path / "out", overwrite=True)
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "similarity.json").write_text("{}")
    with pytest.raises(OutputError, match=r"has no run\.json"):
        RunWriter(tmp_path / "analysis", overwrite=True)
    with pytest.raises(OutputError, match=r"has no similarity\.json, so it is not a dit-explore analysis folder"):
        StagedDirectory(tmp_path / "moved", overwrite=True, marker="similarity.json", what="analysis")
    staged = StagedDirectory(tmp_path / "analysis", overwrite=True, marker="similarity.json", what="analysis")
    (staged.staging / "similarity.json").write_text('{"new": 1}')
    staged.commit()
    assert listing(tmp_path / "analysis") == ["similarity.json"]
    assert (tmp_path / "analysis" / "similarity.json").read_text() == '{"new": 1}'
    # plans' use (no marker: files are written into the folder, which is never replaced) is unchanged
    check_destination(tmp_path / "out", True)
    assert listing(tmp_path) == ["analysis", "moved", "out", "out-2"]


def test_a_link_to_an_empty_folder_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    writer = RunWriter(tmp_path / "link")
    writer.add_image(image((9, 9, 9)), PLAN)
    writer.commit_run(RECORD)
    assert (tmp_path / "link").is_symlink() and listing(tmp_path / "target") == ["000.png", "run.json"]
    assert listing(tmp_path) == ["link", "target"]


def test_cli_run_whose_out_is_taken_meanwhile_keeps_its_images_beside(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from dit_explore.engine.generate import Generator

    tmp_path = tmp_path.resolve()  # messages name the real folder
    out = tmp_path / "out"
    real = Generator.generate

    def another_run_commits_meanwhile(self: Generator, *args: Any, **kwargs: Any) -> Any:
        other = RunWriter(out)
        other.add_image(image((7, 7, 7)), PLAN)
        other.commit_run({**RECORD, "prompts": ["the other run"]})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Generator, "generate", another_run_commits_meanwhile)
    assert cli("run", "tiny-flux", "--prompt", "mine", "--steps", "2", "--out", str(out)) == 2
    line = one_error_line(capsys)
    assert line == (f"dit-explore run: error: --out {out}: was created meanwhile (by another run?) and is not "
                    f"replaced without --overwrite; this run is in {tmp_path / 'out-2'}")
    assert read_run(out).prompts == ("the other run",) and color_of(out / "000.png") == (7, 7, 7)
    kept = read_run(tmp_path / "out-2")
    assert kept.prompts == ("mine",) and kept.status == Status.OK and kept.images == ("000.png",)
    assert plans.load(tmp_path / "out-2" / "000.png").sampling.prompt == "mine"
    assert listing(tmp_path) == ["out", "out-2"]


# ------------------------------------------------------------------------------------------ 11. before loading


@pytest.mark.parametrize("command", ["run", "analyze"])
@pytest.mark.parametrize(("case", "message"), [
    ("parent is a file", "--out {tmp}/file/out: {tmp}/file is not a directory"),
    ("dangling symlink", "--out {tmp}/link: is a symbolic link to nothing ({tmp}/nowhere)"),
    ("current directory", "--out .: is the current directory or a folder above it (name a new folder)"),
    ("above the current directory", "--out ..: is the current directory or a folder above it (name a new folder)"),
    ("a folder of the user's", "--out {tmp}/mine: has no {marker}, so it is not a dit-explore {what} folder; "
                               "--overwrite replaces only those (choose another folder)"),
])
def test_output_problems_are_one_line_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, no_load: None,
                                                     command: str, case: str, message: str) -> None:
    (tmp_path / "file").write_text("a file")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "data.txt").write_text("the user's")
    monkeypatch.chdir(tmp_path / "work")
    out = {"parent is a file": f"{tmp_path}/file/out", "dangling symlink": f"{tmp_path}/link",
           "current directory": ".", "above the current directory": "..",
           "a folder of the user's": f"{tmp_path}/mine"}[case]
    before = every_file(tmp_path)
    assert cli(command, "tiny-flux", "--steps", "1", "--out", out, "--overwrite") == 2
    marker, what = ("run.json", "run") if command == "run" else ("similarity.json", "analysis")
    expected = message.format(tmp=tmp_path, marker=marker, what=what)
    assert one_error_line(capsys, command) == f"dit-explore {command}: error: {expected}"
    assert every_file(tmp_path) == before


@pytest.mark.parametrize("command", ["run", "analyze"])
def test_a_read_only_filesystem_is_one_line_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           no_load: None, command: str) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert cli(command, "tiny-flux", "--out", str(ro / "out")) == 2
        assert one_error_line(capsys, command) == (f"dit-explore {command}: error: --out {ro}/out: cannot create "
                                                   f"a folder in {ro}: Read-only file system")
        assert listing(ro) == []


def test_an_unreadable_parent_is_one_line_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         no_load: None) -> None:
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK | os.X_OK):
            pytest.skip("permissions do not hold here (root): the read-only mount test covers a refused folder")
        assert cli("run", "tiny-flux", "--out", str(locked / "inner" / "out")) == 2
        assert "Permission denied" in one_error_line(capsys)
    finally:
        locked.chmod(0o755)
    assert listing(locked / "inner") == []


# ------------------------------------------------------------------------------------------ 3/11. disk full after loading


def test_disk_full_after_loading_is_one_line_and_keeps_the_images_made(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       disk_full: Callable[[str], FailingOs]) -> None:
    tmp_path = tmp_path.resolve()  # messages name the real folder
    out = tmp_path / "out"
    failing = disk_full(".001.png.")  # the second image's temporary file
    assert cli("run", "tiny-flux", "--prompt", "one", "--prompt", "two", "--prompt", "three", "--steps", "2",
               "--out", str(out)) == 2
    assert failing.failed == 1
    problem = f"--out {out}: cannot write 001.png: No space left on device"
    assert one_error_line(capsys) == (f"dit-explore run: error: {problem}; the 1 image made before are in {out} "
                                      "(run.json says error)")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "error" and run["images"] == ["000.png"] and run["error"] == problem
    assert run["prompts"] == ["one", "two", "three"] and len(run["timing"]["per_image"]) == 1
    assert listing(tmp_path) == ["out"] and listing(out) == ["000.png", "run.json"]


def test_a_real_full_disk_during_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "small", "size=2m") as small:
        fill(small, leave_pages=2)  # room for the staging folder's owner marker, not for a PNG
        assert cli("run", "tiny-flux", "--steps", "2", "--width", "128", "--height", "128",
                   "--out", str(small / "out")) == 2
        assert one_error_line(capsys) == (f"dit-explore run: error: --out {small}/out: cannot write 000.png: "
                                          "No space left on device; nothing written")
        assert every_file(small) == ["filler"]


# ------------------------------------------------------------------------------------------ 12. signals, stale folders


class SafetyNet(Exception):
    """Raised by the test's own handler: the signal reached it, not the command's."""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_run_like_ctrl_c(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    from dit_explore.engine.generate import Generator

    real = Generator.generate
    calls = [0]

    def signalled_on_the_second(self: Generator, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            signal.raise_signal(signum)
        return real(self, *args, **kwargs)

    def net(_signum: int, _frame: object) -> None:
        raise SafetyNet

    monkeypatch.setattr(Generator, "generate", signalled_on_the_second)
    previous = signal.signal(signum, net)
    try:
        code = cli("run", "tiny-flux", "--prompt", "one", "--prompt", "two", "--steps", "2",
                   "--out", str(tmp_path / "out"))
        assert signal.getsignal(signum) is net  # the command's handler is gone again
    finally:
        signal.signal(signum, previous)
    assert code == 128 + signum
    assert one_error_line(capsys) == f"dit-explore run: stopped by {signal.Signals(signum).name}"
    assert listing(tmp_path) == []  # no staging folder left


def _child(code: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_killed_runs_staging_folder_is_swept_by_the_next_run_only_if_its_owner_is_dead(tmp_path: Path) -> None:
    _child(f"""
        import os, signal
        from pathlib import Path
        from dit_explore.engine.core.runs import RunWriter
        RunWriter(Path({str(tmp_path / 'killed')!r}))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    [killed] = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.partial-")]
    owner = json.loads((killed / OWNER_FILE).read_text())
    assert owner_dead(owner)

    alive = RunWriter(tmp_path / "alive")  # this process: alive
    elsewhere = tmp_path / ".elsewhere.partial-abc"
    elsewhere.mkdir()
    (elsewhere / OWNER_FILE).write_text(json.dumps({**owner, "host": owner["host"] + "-other"}))
    unmarked = tmp_path / ".unmarked.partial-abc"
    unmarked.mkdir()
    user = tmp_path / "results.partial-1"  # not hidden: not ours, whatever it holds
    user.mkdir()
    (user / OWNER_FILE).write_text(json.dumps(owner))

    nxt = RunWriter(tmp_path / "next")  # the next run sweeps
    names = listing(tmp_path)
    assert killed.name not in names
    assert {alive.staging.name, elsewhere.name, unmarked.name, user.name, nxt.staging.name} == set(names)
    alive.abort()
    nxt.abort()


def test_owner_dead_only_when_provably_dead_on_this_host() -> None:
    me = owner_marker()
    assert me["host"] == socket.gethostname() and me["pid"] == os.getpid()
    assert not owner_dead(me)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = owner_marker(child.pid)
        assert not owner_dead(running)
    finally:
        child.kill()
        child.wait()
    assert owner_dead(running)  # the pid is gone
    if me["start"] is not None:
        assert process_start(os.getpid()) == me["start"]
        assert owner_dead({**me, "start": me["start"] - 1})  # this pid, another process: reused
    if me["boot"] is not None:
        assert owner_dead({**me, "boot": "another-boot"})  # booted since
    assert not owner_dead({**running, "host": "another-host"})
    assert not owner_dead({**running, "machine": "another-machine"})
    assert not owner_dead({**running, "pid_namespace": "pid:[1]"})  # another container's pids
    for garbage in (None, "x", {}, {**running, "pid": "12"}, {**running, "pid": True}, {**running, "pid": -1}):
        assert not owner_dead(garbage)


# ------------------------------------------------------------------------------------------ 4, 10. live runs


def test_a_run_whose_engine_died_reads_back_as_crashed(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    _child(f"""
        import os, signal
        from pathlib import Path
        from dit_explore.engine.core.runs import LiveRun
        live = LiveRun(Path({str(runs_dir / '20250105-100000-001-died')!r}), {RECORD!r})
        live.add_png(b"an image", 0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    died = runs_dir / "20250105-100000-001-died"
    assert json.loads((died / "run.json").read_text())["status"] == "running"
    LiveRun(runs_dir / "20250105-100100-002-alive", RECORD)  # this process's: running
    elsewhere = runs_dir / "20250105-100200-003-elsewhere"
    LiveRun(elsewhere, RECORD)
    data = json.loads((elsewhere / "run.json").read_text())
    data["owner"]["host"] += "-other"
    (elsewhere / "run.json").write_text(json.dumps(data))
    assert read_run(died).status == Status.CRASHED and read_run(died).images == ("000.png",)
    assert [(r.path.name, r.status) for r in list_runs(runs_dir)] == [
        ("20250105-100000-001-died", Status.CRASHED), ("20250105-100100-002-alive", Status.RUNNING),
        ("20250105-100200-003-elsewhere", Status.RUNNING)]


def test_live_run_takes_the_claimed_empty_folder_else_a_free_name(tmp_path: Path) -> None:
    claimed = tmp_path / "20250105-100000-001-x"
    claimed.mkdir()  # the client claimed it
    assert LiveRun(claimed, RECORD).out == claimed
    taken = LiveRun(claimed, RECORD)  # something is there now: the engine never writes into it
    assert taken.out == tmp_path / "20250105-100000-001-x-2"
    assert read_run(taken.out).status == Status.RUNNING and listing(claimed) == ["run.json"]
    assert listing(tmp_path) == ["20250105-100000-001-x", "20250105-100000-001-x-2"]


def test_sweep_ignores_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / ".x.partial-1").mkdir()
    (tmp_path / ".x.partial-1" / OWNER_FILE).write_text("not json")
    (tmp_path / ".y.partial-1").write_text("a file")
    assert sweep_stale(tmp_path) == [] and sweep_stale(tmp_path / "missing") == []
    assert listing(tmp_path) == [".x.partial-1", ".y.partial-1"]
