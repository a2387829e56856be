"""End to end in a real terminal: tmux runs `dit-explore tiny-flux --graphics halfcell`, we type keys
and read the screen back with capture-pane, as a user would see it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.terminal import Terminal

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    # A cache of its own: the engine's log path (on its command line) then tells its engines apart.
    env = {**os.environ, "DIT_EXPLORE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from dit_explore.tui.cli import entry; entry()",
               "tiny-flux", "--graphics", "halfcell"]
    term = Terminal(command, cwd=tmp_path, env=env)
    yield term
    term.close()


def test_grid_run_image_timing_and_clean_exit(terminal: Terminal) -> None:
    screen = terminal.wait_for(lambda s: "engine  ready" in s and "F 0" in s)  # loaded, groups analyzed
    assert "double  4 blocks" in screen and "single  8 blocks" in screen
    assert "F 0" in screen and "L 7" in screen and "L 3" in screen  # every block is a cell, in its group
    assert terminal.engines(), "no engine process while the explorer runs"

    terminal.keys("Down", "Right", "Right", "S-Right", "S-Right", "S-Right", "s")
    screen = terminal.wait_for(lambda s: "0-1, 6-7" in s)
    assert "8 / 12 block executions per step" in screen

    terminal.keys("Enter")
    screen = terminal.wait_for(lambda s: "last run" in s and "PSNR" in s)
    image_rows = [line for line in screen.splitlines() if line.count("▀") + line.count("▄") > 20]
    assert len(image_rows) >= 10, "no half-block image on screen"
    assert "ms/step" in screen and "predicted 1.50×" in screen

    terminal.keys("C-q")
    assert terminal.exit_code() == "0"
    assert terminal.engines_after_exit() == [], "an engine process outlived the explorer"


def test_a_crash_of_the_interface_exits_non_zero(tmp_path: Path) -> None:
    """If the app itself breaks (here: its screen cannot be built), the shell sees a failure, not 0."""
    env = {**os.environ, "DIT_EXPLORE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    code = ("import dit_explore.tui.app as app\n"
            "def broken(self):\n    raise RuntimeError('no screen today')\n"
            "app.ExplorerApp.compose = broken\n"
            "from dit_explore.tui.cli import entry\nentry()")
    term = Terminal([sys.executable, "-c", code, "tiny-flux", "--graphics", "halfcell"], cwd=tmp_path, env=env)
    try:
        assert term.exit_code(timeout=60) == "1"
        assert "no screen today" in term.screen()
        assert term.engines_after_exit() == [], "an engine process outlived the explorer"
    finally:
        term.close()


def test_keys_typed_while_the_explorer_starts_are_kept(tmp_path: Path) -> None:
    """Keys typed before the interface is up (while the terminal is probed for graphics) arrive, in order,
    and the terminal's answers are never read as keys (one used to open the help screen)."""
    env = {**os.environ, "DIT_EXPLORE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    term = Terminal([sys.executable, "-c", "from dit_explore.tui.cli import entry; entry()", "tiny-flux"],
                    cwd=tmp_path, env=env)
    try:
        term.keys("Down", "s")  # at once: the process has barely started
        screen = term.wait_for(lambda s: "single  8 blocks · edited" in s and "1-7" in s)
        assert "dit-explore keys" not in screen  # no help screen
        term.keys("C-q")
        assert term.exit_code() == "0"
    finally:
        term.close()
