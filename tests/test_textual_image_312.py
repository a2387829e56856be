"""The image pane under textual-image >= 0.13, which needs Python 3.12 (3.11 gets 0.12): a second venv on
python3.12 with Textual as pinned, textual-image >= 0.13 from PyPI and this checkout's wheel (no torch: the
TUI side is torch-free), where a small script mounts the pane with `run_test` for the halfcell, sixel
and tgp widgets, shows two images (and their difference) at several sizes, and prints the boxes; they
must pass the same geometric checks as tests/tui/test_images.py.

A missing python3.12 fails the test (it is part of the supported range). The venv is built once per test
session. The wheel is built the way tests/test_wheel.py builds it (from a clean copy of the source).
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_wheel import ROOT, _ignore_non_source
from tests.tui.test_images import check_geometry, layout_of

PY312_CANDIDATES = ("python3.12", "/root/.pyenv/versions/3.12.1/bin/python")
PACKAGES = ("textual==8.2.8", "textual-image>=0.13", "pillow", "numpy", "platformdirs", "rich")
CELL = (8, 17)  # what the probe's terminal says its cells are (textual-image reads TEXTUAL_CELL_*)
TIMEOUT = 300


def _python312() -> str:
    """A working Python 3.12 (a pyenv shim on PATH may exist and still refuse to run)."""
    for candidate in PY312_CANDIDATES:
        found = shutil.which(candidate)
        if found is None:
            continue
        try:
            out = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":
            return found
    pytest.fail(f"python3.12 is missing (looked for {', '.join(PY312_CANDIDATES)}): the textual-image >= 0.13 "
                "path cannot be tested")


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, (f"{shlex.join(args)} exited {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def python312(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's interpreter: Textual, textual-image >= 0.13 and the checkout's wheel (no torch)."""
    base = _python312()
    tmp = tmp_path_factory.mktemp("py312")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_ignore_non_source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(tmp / "wheels"), str(source)])
    (wheel,) = (tmp / "wheels").glob("dit_explore-*.whl")
    venv = tmp / "venv"
    _run([base, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES])
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", str(wheel)])
    return python


PROBE = '''
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from importlib.metadata import version
from typing import Any

import numpy as np
import textual_image.widget  # noqa: F401 - probes the terminal (here: TEXTUAL_CELL_*) before any app
from PIL import Image
from textual.app import App

from dit_explore.tui.metrics import difference
from dit_explore.tui.session import RunRecord
from dit_explore.engine.core.protocol import Status
from dit_explore.tui.widgets.image_pane import DifferenceSlot, ImagePane

{layout_of}

IMAGES = [(64, 64), (128, 64), (1024, 1024)]
SIZES = [(100, 40), (160, 50), (44, 70)]


def noise(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


class PaneApp(App):
    def __init__(self, graphics):
        super().__init__()
        self.graphics = graphics

    def compose(self):
        yield ImagePane(self.graphics)


async def probe(graphics):
    app = PaneApp(graphics)
    found = []
    async with app.run_test(size=SIZES[0]) as pilot:
        pane = app.query_one(ImagePane)
        for index, (width, height) in enumerate(IMAGES):
            plan, baseline = noise(width, height, 1), noise(width, height, 2)
            record = RunRecord(job=1, label="probe", started="12:00:00", plan_text="", prompt="p",
                               status=Status.OK, image=plan, baseline=baseline,
                               difference=difference(plan, baseline))
            pane.show_record(record)
            await pilot.resize_terminal(*SIZES[index % len(SIZES)])
            for _ in range(1000):
                if pane.query_one(DifferenceSlot).image is not None:
                    break
                await pilot.pause(0.02)
            for _ in range(3):
                await pilot.pause()
            found.append({{"graphics": graphics, "image": [width, height], "layout": layout_of(pane)}})
    return found


results = []
for graphics in sys.argv[2:]:
    results.extend(asyncio.run(probe(graphics)))
with open(sys.argv[1], "w") as out:
    json.dump({{"python": list(sys.version_info[:2]), "textual_image": version("textual-image"),
               "textual": version("textual"), "torch": importlib.util.find_spec("torch") is not None,
               "results": results}}, out)
'''


def test_the_pane_keeps_its_geometry_with_textual_image_0_13_on_python_3_12(python312: Path,
                                                                            tmp_path: Path) -> None:
    started = time.monotonic()
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(layout_of=textwrap.dedent(inspect.getsource(layout_of))))
    out = tmp_path / "boxes.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env |= {"TEXTUAL_CELL_WIDTH": str(CELL[0]), "TEXTUAL_CELL_HEIGHT": str(CELL[1])}
    # From a folder outside the checkout: the wheel is what it imports.
    _run([str(python312), str(script), str(out), "halfcell", "sixel", "tgp"], cwd=tmp_path, env=env)
    found = json.loads(out.read_text())
    assert found["python"] == [3, 12]
    assert tuple(int(p) for p in found["textual_image"].split(".")[:2]) >= (0, 13), found["textual_image"]
    assert found["textual"] == "8.2.8" and not found["torch"]  # the TUI side runs without torch
    results = found["results"]
    assert {r["graphics"] for r in results} == {"halfcell", "sixel", "tgp"} and len(results) == 9
    for result in results:
        layout = result["layout"]
        assert layout["cell"] == ([1, 2] if result["graphics"] == "halfcell" else list(CELL)), result
        check_geometry(layout, images=3)
        assert [slot["image"] for slot in layout["slots"]] == [result["image"]] * 3
        assert "plan vs baseline: PSNR" in layout["line_text"]
        print(result["graphics"], result["image"], [slot["picture"] for slot in layout["slots"]])
    print(f"probe: {time.monotonic() - started:.1f} s")
