"""Run directories: one PNG per prompt plus `run.json`, written atomically.

A run directory is assembled in a hidden staging folder beside its destination and renamed into place
when complete, so an interrupted run never leaves a half-written DIR. Each PNG carries its plan file
(with the sampling filled in) in a text chunk, so `--plan image.png` replays it exactly.

Torch-free (pillow only): the TUI reads run directories too.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.protocol import Status

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
