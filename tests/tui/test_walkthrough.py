"""The explorer walked through as a user would, in a real terminal at 80x24 and at 200x60: launch, edit,
run, cancel, kill the engine, run twice more, open a PNG, quit. Exit status 0, no engine left behind, and
no traceback on any screen along the way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.terminal import Terminal

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
ROOT = Path(__file__).resolve().parents[2]


def statuses(runs: Path) -> list[str]:
    """How each run folder's run.json says its run ended, oldest first."""
    out = []
    for folder in sorted(p for p in runs.glob("*") if (p / "run.json").exists()):
        out.append(json.loads((folder / "run.json").read_text())["status"])
    return out


@pytest.mark.parametrize("size", [(80, 24), (200, 60)], ids=["80x24", "200x60"])
def test_walkthrough(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    narrow = width < 140
    env = {**os.environ, "DIT_EXPLORE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from dit_explore.tui.cli import entry; entry()", "tiny-flux",
               "--graphics", "halfcell"]
    term = Terminal(command, cwd=tmp_path, env=env, width=width, height=height)
    runs = tmp_path / "runs"
    screens: list[str] = []

    def wait(check, timeout: float = 90.0) -> str:  # type: ignore[no-untyped-def]
        screen = term.wait_for(check, timeout)
        screens.append(screen)
        return screen

    def images_view() -> None:
        if narrow:
            term.keys("F2")

    def plan_view() -> None:
        if narrow:
            term.keys("F2")

    def steps(value: str) -> None:
        """Set the steps field: e (prompt), tab to seed, tab to steps, clear it, type."""
        term.keys("e", "Tab", "Tab", "C-u", *value, "Escape")

    try:
        images_view()  # the status is in the images view (a message may cover the view bar's state)
        wait(lambda s: "engine  ready" in s)
        plan_view()
        # edit: skip single 0
        term.keys("Down", "s")
        wait(lambda s: "single  1-7" in s)
        # run
        term.keys("Enter")
        images_view()
        wait(lambda s: "last run" in s and "PSNR" in s and statuses(runs) == ["ok"])
        # cancel: a long run, escape while it runs
        plan_view()
        steps("400")
        term.keys("Enter")
        images_view()
        wait(lambda s: "step" in s and "busy" in s)
        term.keys("Escape")
        wait(lambda s: "cancelled" in s)
        # kill the engine
        engines = term.engines()
        assert len(engines) == 1
        os.kill(int(engines[0].split()[0]), signal.SIGKILL)
        wait(lambda s: "crashed" in s)
        # run twice more: enter starts a new engine
        plan_view()
        steps("2")
        term.keys("Enter")
        wait(lambda s: statuses(runs).count("ok") == 2)
        term.keys("Enter")
        wait(lambda s: statuses(runs).count("ok") == 3)
        # open a PNG written by the first run
        png = sorted(runs.glob("*/000.png"))[0]
        term.keys("C-o")
        wait(lambda s: "Open a plan" in s)
        term.keys("Tab", *str(png), "Enter")
        images_view()
        wait(lambda s: "000.png" in s)
        # quit
        term.keys("C-q")
        assert term.exit_code() == "0"
        assert term.engines_after_exit() == [], "an engine process outlived the explorer"
        assert statuses(runs) == ["ok", "cancelled", "ok", "ok"]
        assert not [s for s in screens if "Traceback" in s]
    finally:
        term.close()
