"""End to end in a real terminal: tmux runs `dit-explore tiny-flux --graphics halfcell`, we type keys
and read the screen back with capture-pane, as a user would see it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
ROOT = Path(__file__).resolve().parents[2]


class Terminal:
    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"dit-explore-test-{uuid.uuid4().hex[:8]}"
        self.cache = tmp_path / "cache"
        self.exit_file = tmp_path / "exit-code"
        # A cache of its own: the engine's log path (on its command line) then tells its engines apart.
        env = {**os.environ, "DIT_EXPLORE_CACHE": str(self.cache), "TERM": "xterm-256color",
               "PYTHONPATH": str(ROOT)}
        command = (f"cd {tmp_path} && {sys.executable} -c 'from dit_explore.tui.cli import entry; entry()' "
                   f"tiny-flux --graphics halfcell; echo $? > {self.exit_file}; sleep 60")
        self.tmux("new-session", "-d", "-s", "main", "-x", "140", "-y", "44", command, env=env)

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              env=env).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", "-t", "main", key)
            time.sleep(0.15)

    def wait_for(self, check: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never matched; last screen:\n{text}")
            time.sleep(0.2)

    def engines(self) -> list[str]:
        ps = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if "-m dit_explore.engine" in line and str(self.cache) in line]

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
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
    deadline = time.monotonic() + 20
    while not terminal.exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert terminal.exit_file.read_text().strip() == "0"
    deadline = time.monotonic() + 10
    while terminal.engines() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert terminal.engines() == [], "an engine process outlived the explorer"
