"""Run directories: one PNG per prompt plus `run.json`, written atomically.

A run directory is assembled in a hidden staging folder beside its destination and renamed into place
when complete, so an interrupted run never leaves a half-written DIR. Each PNG carries its plan file
(with the sampling filled in) in a text chunk, so `--plan image.png` replays it exactly.

Torch-free (pillow only): the TUI reads run directories too.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.protocol import ProtocolError, Speed, Status, from_json
from dit_explore.engine.core.sampling import BlockRuns, Timing
from dit_explore.engine.core.text import shown

RUN_JSON = "run.json"
RUN_FORMAT = 1


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dit-explore", "torch", "diffusers", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def image_plan(plan: plans.Plan, model: str, sampling: plans.Sampling) -> plans.Plan:
    """The plan an image was made with, carrying the sampling that reproduces it."""
    return replace(plan, model=model, sampling=sampling)


# ------------------------------------------------------------------------------------------ owners

OWNER_FILE = ".dit-explore-owner.json"  # in a staging folder: the process building it (stale ones are swept)
_STAGING_NAME = re.compile(r"\..+\.(?:partial|old)-[^/]+")  # StagedDirectory's hidden folders


class OutputError(ValueError):
    """A destination that cannot take the output, or a commit refused: one line (the CLI prints it and
    exits 2). A ValueError, as check_destination's refusals always were."""


def _first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.readline().strip() or None
    except (OSError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (/proc/PID/stat field 22), or None where
    that cannot be read (no such process, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after the name start at field 3
    except (OSError, ValueError, IndexError):
        return None


def owner_marker(pid: int | None = None) -> dict[str, Any]:
    """Who writes a folder: host, machine and boot ids, pid namespace, pid and the process's start time,
    so that another process can tell for sure that the writer is gone (`owner_dead`)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "machine": _first_line("/etc/machine-id"),
            "boot": _first_line("/proc/sys/kernel/random/boot_id"), "pid_namespace": _pid_namespace(),
            "pid": pid, "start": process_start(pid)}


def owner_dead(owner: object) -> bool:
    """True only when `owner` (an owner_marker) provably names a process that is gone: written on this
    host (same host name and machine id), and the machine has booted since, or no process has that pid,
    or the one that has it started at another time (the pid was reused). A marker of another host, of
    another pid namespace (another container), or anything unreadable is never dead: its folder is
    someone's live work for all we know."""
    if not isinstance(owner, dict):
        return False
    here = owner_marker(0)  # pid 0: only the host facts are used
    if owner.get("host") != here["host"] or owner.get("machine") != here["machine"]:
        return False
    pid, start = owner.get("pid"), owner.get("start")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if isinstance(owner.get("boot"), str) and here["boot"] is not None and owner["boot"] != here["boot"]:
        return True  # the same machine, booted since: every process of before is gone
    if owner.get("pid_namespace") != here["pid_namespace"]:
        return False  # its pids are not ours to look up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's process)
    except OSError:
        return False
    now = process_start(pid)
    return isinstance(start, int) and not isinstance(start, bool) and now is not None and now != start


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the hidden staging folders (`.NAME.partial-*`, `.NAME.old-*`) directly in `folder` that
    were left by a process provably dead on this host (its owner marker says so: `owner_dead`); never one
    without a marker, of a live process, or of another host. Returns those removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _STAGING_NAME.fullmatch(entry.name):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            with open(os.path.join(entry.path, OWNER_FILE), "rb") as f:
                owner = json.loads(f.read(64 << 10))
        except (OSError, ValueError):
            continue
        if owner_dead(owner):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (threads write files too)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ writing


def check_destination(out: Path, overwrite: bool, marker: str | None = None, what: str = "output") -> None:
    """Refuse, with one line (OutputError, a ValueError), a destination that cannot take the output: a
    file, a symbolic link to nothing, a parent that is not a folder, a non-empty folder without
    `overwrite`. For a folder that is replaced as a whole (`marker` given: the file that makes a folder one
    of ours, e.g. run.json), also the current directory or a folder above it, and, with `overwrite`, a
    non-empty folder without `marker` in it: --overwrite never replaces a folder of the user's."""
    s = shown(out)
    try:
        if out.is_symlink() and not out.exists():
            raise OutputError(f"--out {s}: is a symbolic link to nothing ({shown(os.readlink(out))})")
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {s}: exists and is not a directory")
        if not out.exists():
            ancestor = out.absolute().parent
            while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                raise OutputError(f"--out {s}: {shown(ancestor)} is not a directory")
        if marker is not None:
            real, here = Path(os.path.realpath(out)), Path(os.getcwd()).resolve()
            if real == here or real in here.parents:
                raise OutputError(f"--out {s}: is the current directory or a folder above it (name a new folder)")
        if out.is_dir() and any(out.iterdir()):
            if not overwrite:
                raise OutputError(f"--out {s}: directory is not empty (choose another, or pass --overwrite)")
            if marker is not None and not (out / marker).is_file():
                raise OutputError(f"--out {s}: has no {marker}, so it is not a dit-explore {what} folder; "
                                  "--overwrite replaces only those (choose another folder)")
    except OSError as exc:
        raise OutputError(f"--out {s}: cannot use it: {_why(exc)}") from None


class StagedDirectory:
    """A folder built in a hidden staging folder beside `out` and renamed into place by `commit`, so
    `out` is never half-written; `abort` removes the staging folder.

    The staging folder holds an owner marker (OWNER_FILE) until the commit, so that one left by a killed
    process is swept by the next (`sweep_stale`, run here). The commit is one rename(2), which refuses a
    non-empty destination atomically: of two runs committing to one `out`, the second never replaces the
    first's output; it keeps its own in a visible sibling (`out-2`, ...) and says so (OutputError). With
    `overwrite`, only a folder holding `marker` (a dit-explore folder of this kind) is replaced."""

    def __init__(self, out: Path, overwrite: bool = False, *, marker: str, what: str = "output") -> None:
        check_destination(out, overwrite, marker, what)
        self.shown = shown(out)
        self.out = Path(os.path.realpath(out))  # a link to a folder: that folder (a rename would replace the link)
        self.overwrite, self.marker, self.what = overwrite, marker, what
        self._finished = False  # committed, kept elsewhere, or aborted: the staging folder is no longer ours
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(self.out.parent)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        except OSError as exc:
            raise OutputError(f"--out {self.shown}: cannot create a folder in {shown(self.out.parent)}: "
                              f"{_why(exc)}") from None
        try:
            self.staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
            _write_json(self.staging / OWNER_FILE, owner_marker())
        except OSError as exc:
            self.abort()
            raise OutputError(f"--out {self.shown}: cannot write in {shown(self.out.parent)}: {_why(exc)}") from None

    def commit(self) -> Path:
        """Rename the staging folder to `out`; OutputError (one line) when `out` was taken meanwhile by
        something this run may not replace (the output is then kept in a sibling, named in the message);
        OSError for anything else (the staging folder stays, for `abort`)."""
        try:
            os.rename(self.staging, self.out)
        except OSError as exc:
            if exc.errno not in _TAKEN:
                raise _named(exc, self.out) from None
            self._replace()
        self._finished = True
        with contextlib.suppress(OSError):
            os.unlink(self.out / OWNER_FILE)
        return self.out

    def _replace(self) -> None:
        """`out` exists and is not empty: replace it if --overwrite allows, else keep ours beside it."""
        if not self.overwrite:
            raise OutputError(self._keep(f"--out {self.shown}: was created meanwhile (by another run?) and is "
                                         "not replaced without --overwrite"))
        if self.out.is_symlink() or not (self.out / self.marker).is_file():
            raise OutputError(self._keep(f"--out {self.shown}: is now a folder without {self.marker}, which "
                                         "--overwrite never replaces"))
        # Move the old folder aside first; the instant between the two renames is the only one without `out`.
        trash = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
        try:
            _write_json(trash / OWNER_FILE, owner_marker())  # a kill right here leaves a folder swept later
            os.rename(self.out, trash / "old")
        except FileNotFoundError:
            pass  # gone meanwhile
        except OSError as exc:
            shutil.rmtree(trash, ignore_errors=True)
            raise _named(exc, self.out) from None
        try:
            os.rename(self.staging, self.out)
        except OSError as exc:
            if os.path.lexists(trash / "old"):
                with contextlib.suppress(OSError):
                    os.rename(trash / "old", self.out)  # put it back (fails if another run took `out`)
            shutil.rmtree(trash, ignore_errors=True)
            if exc.errno in _TAKEN:
                raise OutputError(self._keep(f"--out {self.shown}: another run replaced it meanwhile")) from None
            raise _named(exc, self.out) from None
        shutil.rmtree(trash, ignore_errors=True)

    def _keep(self, reason: str) -> str:
        """Keep the staging folder's contents in the first free visible sibling `out-2`, `out-3`, ...
        (claimed with os.mkdir, then replaced by the rename); the one line that says so."""
        for k in range(2, 1000):
            sibling = self.out.with_name(f"{self.out.name}-{k}")
            try:
                os.mkdir(sibling)
            except FileExistsError:
                continue
            except OSError:
                break
            try:
                os.rename(self.staging, sibling)
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(sibling)
                break
            self._finished = True
            with contextlib.suppress(OSError):
                os.unlink(sibling / OWNER_FILE)
            return f"{reason}; this {self.what} is in {shown(sibling)}"
        # No visible sibling could be made: keep the hidden staging folder itself (without its marker, so
        # that no later sweep takes it).
        self._finished = True
        with contextlib.suppress(OSError):
            os.unlink(self.staging / OWNER_FILE)
        return f"{reason}; this {self.what} is in {shown(self.staging)}"

    def abort(self) -> None:
        """Remove the staging folder (nothing, once committed or kept elsewhere)."""
        if not self._finished:
            self._finished = True
            shutil.rmtree(self.staging, ignore_errors=True)


_TAKEN = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)  # rename(2): the destination is occupied


class RunWriter(StagedDirectory):
    """A `dit-explore run` directory: images collected while generating, run.json written last."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        super().__init__(out, overwrite, marker=RUN_JSON, what="run")
        self.images: list[str] = []

    def add_image(self, image: Image.Image, plan_for_image: plans.Plan, quantization: str | None = None,
                  placement: str | None = None) -> str:
        name = f"{len(self.images):03d}.png"
        write_atomic(self.staging / name, png_bytes(image, plan_for_image, quantization, placement))
        self.images.append(name)
        return name

    def commit_run(self, run: Mapping[str, Any], status: Status = Status.OK) -> Path:
        record = {"format": RUN_FORMAT, "status": status.value, "images": list(self.images), **run}
        _write_json(self.staging / RUN_JSON, record)
        return self.commit()


def claim_folder(out: Path, *, accept_empty: bool) -> Path:
    """A new folder for one run: `out`, else the first free `out-2`, `out-3`, ... (os.mkdir is the atomic
    claim, so two processes never get the same one). With `accept_empty`, an empty folder at `out` is
    taken as it is: the engine's side, where the client that chose the name has claimed it already."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = out if k == 1 else out.with_name(f"{out.name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if k == 1 and accept_empty and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                return path
    raise FileExistsError(errno.EEXIST, "no free name for a run folder", str(out))


class LiveRun:
    """A run directory written as results arrive (the engine process): every PNG and run.json is
    replaced atomically, so after any crash the folder holds each finished image and a run.json that
    lists exactly those. Plan images are 000.png, 001.png, ...; baselines baseline-000.png, ...

    run.json names its writer (`owner`: owner_marker), so that a reader can tell a run whose engine died
    from a live one (read_run says crashed). The folder is `out`, or a free `out-N` when something else is
    there (`claim_folder`): `self.out` is the one used. Every write that fails raises an OSError naming
    the file and leaves no temporary file; the record on disk is then the last one written."""

    def __init__(self, out: Path, record: Mapping[str, Any]) -> None:
        self.out = claim_folder(out, accept_empty=True)
        record = {"format": RUN_FORMAT, "status": Status.RUNNING.value, "images": [], "baseline_images": [],
                  **record, "owner": owner_marker()}
        try:
            _write_json(self.out / RUN_JSON, record)
        except OSError:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # nothing in it: leave no folder that is not a run
            raise
        self.record: dict[str, Any] = record

    def add_png(self, png: bytes, index: int, baseline: bool = False) -> str:
        key = "baseline_images" if baseline else "images"
        name = f"{'baseline-' if baseline else ''}{index:03d}.png"
        write_atomic(self.out / name, png)
        self._write({**self.record, key: [*self.record[key], name]})
        return name

    def update(self, **fields: Any) -> None:
        self._write({**self.record, **fields})

    def _write(self, record: dict[str, Any]) -> None:
        _write_json(self.out / RUN_JSON, record)
        self.record = record  # only once on disk: a failed write leaves the last good record


def mark_ended(path: Path, status: Status) -> bool:
    """The client's side when its engine is gone: a run.json in `path` that still says running is
    rewritten to say `status` (crashed, cancelled); an empty folder (claimed, never written) is removed.
    True when something changed; False when there was nothing to do or it could not be done."""
    file = path / RUN_JSON
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            path.rmdir()  # fails unless empty
            return True
        return False
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("status") != Status.RUNNING.value:
        return False
    try:
        _write_json(file, {**data, "status": status.value})
    except OSError:
        return False
    return True


PNG_QUANTIZATION_KEY = "dit-explore-quantization"  # present when the blocks were quantized (--quantize)
PNG_PLACEMENT_KEY = "dit-explore-placement"  # present when weights were offloaded (--memory offload, sequential)


def png_bytes(image: Image.Image, plan_for_image: plans.Plan, quantization: str | None = None,
              placement: str | None = None) -> bytes:
    """PNG bytes carrying the image's plan file (sampling filled in), for replay with --plan, the
    blocks' quantization when they were quantized (a replay without it draws other numbers), and where the
    weights lived when not all on the device (`--memory`: the same numbers, for the record)."""
    info = PngInfo()
    info.add_itxt(plans.PNG_PLAN_KEY, plans.dumps(plan_for_image))
    if quantization is not None:
        info.add_itxt(PNG_QUANTIZATION_KEY, quantization)
    if placement is not None:
        info.add_itxt(PNG_PLACEMENT_KEY, placement)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def _named(exc: OSError, path: Path) -> OSError:
    """`exc` as an OSError of the same kind that names `path` (a failed write() names no file)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a new temporary file beside it (mkstemp: an unpredictable name,
    created exclusively, so a planted symlink cannot redirect the write), then os.replace. On any failure
    (a full disk: ENOSPC) the temporary file is removed and an OSError naming `path` is raised."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary file (mkstemp makes 0600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from None
        raise


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())


# ------------------------------------------------------------------------------------------ reading back

_STAMPED = re.compile(r"(\d{8}-\d{6})-")  # the explorer's folder names: 20261126-123042-001-label


@dataclass(frozen=True)
class PastRun:
    """A run directory read back from its run.json (the explorer's history across sessions). Reading one
    loads no image: `read_images` does, when the run is wanted."""

    path: Path
    started: float  # seconds since the epoch: from the folder name (20261126-123042-...), else run.json's mtime
    status: Status  # as run.json says; RUNNING when no engine finished it, CRASHED when its engine is
    # provably dead (run.json's owner: a process of this host that is gone)
    model: str
    plan_text: str  # the plan file the run used
    plan_name: str | None
    orders: dict[str, str]  # every stack's order, as run.json lists them
    prompts: tuple[str, ...]
    sampling: plans.Sampling  # the resolved settings the run used, as a plan's [sampling] (prompt unset)
    images: tuple[str, ...]  # file names in the folder, in prompt order
    baseline_images: tuple[str, ...]
    timing: Timing | None  # of the first plan image
    block_runs: BlockRuns | None
    speed: Speed | None = None  # the plan against the full model, timed side by side after the images

    @property
    def prompt(self) -> str:
        return self.prompts[0] if self.prompts else ""

    @property
    def label(self) -> str:
        """The plan's name, else the orders that differ from the full model (how the explorer titles a run)."""
        if self.plan_name:
            return self.plan_name
        try:
            plan = plans.loads(self.plan_text, str(self.path))
        except plans.PlanError:
            return "; ".join(f"{name}: {order}" for name, order in self.orders.items()) or "full model"
        return plans.summary(plan)


def _file_names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v and Path(v).name == v for v in value):
        raise ValueError(f"{where}: not a list of file names")
    return tuple(value)


def read_run(path: Path) -> PastRun:
    """The run.json of one run directory; ValueError (one line) when it is missing or not one of ours."""
    file = path / RUN_JSON
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        mtime = file.stat().st_mtime
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: not a run record")
    try:
        status = Status(data.get("status", Status.OK.value))
    except ValueError:
        raise ValueError(f"{file}: unknown status {data.get('status')!r}") from None
    if status == Status.RUNNING and owner_dead(data.get("owner")):
        status = Status.CRASHED  # its engine died on this host without saying how the run ended
    model, plan, prompts = data.get("model"), data.get("plan"), data.get("prompts")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ValueError(f"{file}: no model name")
    if not isinstance(plan, dict) or not isinstance(plan.get("text"), str):
        raise ValueError(f"{file}: no plan text")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{file}: no prompts")
    orders = plan.get("orders")
    orders = {k: v for k, v in orders.items() if isinstance(v, str)} if isinstance(orders, dict) else {}
    settings: dict[str, Any] = data["sampling"] if isinstance(data.get("sampling"), dict) else {}
    kinds: dict[str, type | tuple[type, ...]] = {"seed": int, "steps": int, "width": int, "height": int,
                                                 "guidance": (int, float)}
    sampling = plans.Sampling(**{k: settings[k] for k, kind in kinds.items()
                                 if isinstance(settings.get(k), kind) and not isinstance(settings.get(k), bool)})
    if sampling.guidance is not None:
        sampling = replace(sampling, guidance=float(sampling.guidance))
    timing: Timing | None = None
    block_runs: BlockRuns | None = None
    per_image = data["timing"].get("per_image") if isinstance(data.get("timing"), dict) else None
    try:
        if isinstance(per_image, list) and per_image:
            timing = from_json(Timing, per_image[0], f"{file}: timing")
        if data.get("block_runs") is not None:
            block_runs = from_json(BlockRuns, data["block_runs"], f"{file}: block_runs")
    except ProtocolError:
        pass  # timing is a nicety; the run is still worth listing
    speed: Speed | None = None
    if isinstance(data.get("speed"), dict):
        with contextlib.suppress(ProtocolError):  # like timing: a nicety
            speed = from_json(Speed, data["speed"], f"{file}: speed")
    stamp = _STAMPED.match(path.name)
    started = time.mktime(time.strptime(stamp.group(1), "%Y%m%d-%H%M%S")) if stamp else mtime
    return PastRun(path=path, started=started, status=status, model=model["name"], plan_text=plan["text"],
                   plan_name=plan.get("name") if isinstance(plan.get("name"), str) else None, orders=orders,
                   prompts=tuple(prompts), sampling=sampling,
                   images=_file_names(data.get("images", []), f"{file}: images"),
                   baseline_images=_file_names(data.get("baseline_images", []), f"{file}: baseline_images"),
                   timing=timing, block_runs=block_runs, speed=speed)


def list_runs(runs_dir: Path, model: str | None = None, limit: int = 200) -> list[PastRun]:
    """The newest `limit` run directories directly under `runs_dir` (of `model`, when given), oldest
    first. Folders without a readable run.json (and hidden staging folders) are skipped; only run.json
    files are read, newest first, until `limit` are found."""
    try:
        entries = [e for e in os.scandir(runs_dir) if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return []

    def started(entry: os.DirEntry[str]) -> float:
        stamp = _STAMPED.match(entry.name)
        if stamp:
            try:
                return time.mktime(time.strptime(stamp.group(1), "%Y%m%d-%H%M%S"))
            except ValueError:
                pass
        try:
            return os.stat(Path(entry.path) / RUN_JSON).st_mtime
        except OSError:
            return 0.0

    found: list[PastRun] = []
    for entry in sorted(entries, key=lambda e: (started(e), e.name), reverse=True):
        if len(found) >= limit:
            break
        try:
            run = read_run(Path(entry.path))
        except ValueError:
            continue
        if model is None or run.model == model:
            found.append(run)
    return found[::-1]


def read_images(path: Path) -> tuple[Image.Image | None, Image.Image | None]:
    """The first plan image and the first baseline of a run directory, as run.json lists them (None for
    one that is missing or unreadable)."""
    try:
        run = read_run(path)
    except ValueError:
        return None, None

    def load(names: tuple[str, ...]) -> Image.Image | None:
        if not names:
            return None
        try:
            with Image.open(path / names[0]) as image:
                image.load()
                return image.copy()
        except OSError:
            return None

    return load(run.images), load(run.baseline_images)
