"""Run directories: one PNG per prompt plus `run.json`, written atomically.

A run directory is assembled in a hidden staging folder beside its destination and renamed into place
when complete, so an interrupted run never leaves a half-written DIR. Each PNG carries its plan file
(with the sampling filled in) in a text chunk, so `--plan image.png` replays it exactly.

Torch-free (pillow only): the TUI reads run directories too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import shutil
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


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty directory unless asked; raise ValueError with one line."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out}: directory is not empty (choose another, or pass --overwrite)")


class StagedDirectory:
    """A folder built in a hidden staging folder beside `out` and renamed into place by `commit`, so
    `out` is never half-written; `abort` removes the staging folder."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        check_destination(out, overwrite)
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        self.staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result is an ordinary folder

    def commit(self) -> Path:
        if self.out.exists():
            # Move the old folder aside first, so at every instant `out` is either the old or the new one.
            trash = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.replace(self.out, trash / "old")
            os.replace(self.staging, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.staging, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class RunWriter(StagedDirectory):
    """A `dit-explore run` directory: images collected while generating, run.json written last."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        super().__init__(out, overwrite)
        self.images: list[str] = []

    def add_image(self, image: Image.Image, plan_for_image: plans.Plan) -> str:
        name = f"{len(self.images):03d}.png"
        write_atomic(self.staging / name, png_bytes(image, plan_for_image))
        self.images.append(name)
        return name

    def commit_run(self, run: Mapping[str, Any]) -> Path:
        record = {"format": RUN_FORMAT, "status": Status.OK.value, "images": list(self.images), **run}
        _write_json(self.staging / RUN_JSON, record)
        return self.commit()


class LiveRun:
    """A run directory written as results arrive (the engine process): every PNG and run.json is
    replaced atomically, so after any crash the folder holds each finished image and a run.json that
    lists exactly those. Plan images are 000.png, 001.png, ...; baselines baseline-000.png, ..."""

    def __init__(self, out: Path, record: Mapping[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=False)
        self.out = out
        self.record: dict[str, Any] = {"format": RUN_FORMAT, "status": Status.RUNNING.value, "images": [],
                                       "baseline_images": [], **record}
        _write_json(out / RUN_JSON, self.record)

    def add_png(self, png: bytes, index: int, baseline: bool = False) -> str:
        key = "baseline_images" if baseline else "images"
        name = f"{'baseline-' if baseline else ''}{index:03d}.png"
        write_atomic(self.out / name, png)
        self.record[key] = [*self.record[key], name]
        _write_json(self.out / RUN_JSON, self.record)
        return name

    def update(self, **fields: Any) -> None:
        self.record.update(fields)
        _write_json(self.out / RUN_JSON, self.record)


def png_bytes(image: Image.Image, plan_for_image: plans.Plan) -> bytes:
    """PNG bytes carrying the image's plan file (sampling filled in), for replay with --plan."""
    info = PngInfo()
    info.add_itxt(plans.PNG_PLAN_KEY, plans.dumps(plan_for_image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    status: Status  # as run.json says; RUNNING when no engine finished it (the engine died or was stopped)
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
        parts = [f"{name}: {plans.format_order(order)}" for name, order in plan.orders]
        return "; ".join(parts) if parts else "full model"


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
