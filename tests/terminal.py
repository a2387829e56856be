"""A real terminal for end-to-end tests: tmux runs a command in a detached session of its own (its own
server socket), the test types keys with send-keys and reads the screen back with capture-pane, as a
user would see it. Used by tests/tui/test_terminal.py (the checkout) and tests/test_wheel.py (an
installed wheel)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class Terminal:
    """`command` (an argv) runs in `cwd` with exactly `env` (plus TERM), in a `width` x `height` tmux pane.

    `env` must set DIT_EXPLORE_CACHE to a folder of this test's own: the engine's log path (on its
    command line) lies in it, which tells this explorer's engines apart from any other's. The command's
    exit status is written to `exit_file` (default: cwd/exit-code); the pane then stays open a while so
    the last screen can still be read."""

    def __init__(self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                 exit_file: Path | None = None, width: int = 140, height: int = 44) -> None:
        self.socket = f"dit-explore-test-{uuid.uuid4().hex[:8]}"
        self.cache = Path(env["DIT_EXPLORE_CACHE"])
        self.exit_file = exit_file or cwd / "exit-code"
        env = {**env, "TERM": "xterm-256color"}
        shell = (f"cd {shlex.quote(str(cwd))} && {shlex.join(command)}; "
                 f"echo $? > {shlex.quote(str(self.exit_file))}; sleep 60")
        # This call starts the server (the socket is new), so the pane's shell inherits `env`.
        self.tmux("new-session", "-d", "-s", "main", "-x", str(width), "-y", str(height), shell, env=dict(env))

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
        """The first screen that passes `check`; polls until `timeout` seconds have passed, or until the
        command has exited (its screen then stays as it is)."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.exit_file.exists()  # before the capture: that screen is then its last
            text = self.screen()
            if check(text):
                return text
            if exited:
                raise AssertionError(f"the command exited (status {self.exit_code(timeout=2.0)}) before the "
                                     f"screen matched; last screen:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never matched; last screen:\n{text}")
            time.sleep(0.2)

    def exit_code(self, timeout: float = 20.0) -> str | None:
        """The command's exit status as written by the shell, or None if it has not exited in time."""
        deadline = time.monotonic() + timeout
        while not self.exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        # The shell may have created the file but not yet written it.
        while self.exit_file.exists() and not self.exit_file.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.exit_file.read_text().strip() if self.exit_file.exists() else None

    def engines(self) -> list[str]:
        """`ps` lines of this explorer's engine processes (`-m dit_explore.engine` with our cache path)."""
        ps = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if "-m dit_explore.engine" in line and str(self.cache) in line]

    def engines_after_exit(self, timeout: float = 10.0) -> list[str]:
        """Engines still alive once `timeout` seconds have passed with some alive (empty: all gone)."""
        deadline = time.monotonic() + timeout
        while self.engines() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.engines()

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        # A failed test may leave this explorer's engine behind (it runs in a session of its own):
        # end those, by pid, after giving them a moment to notice their explorer is gone.
        for line in self.engines_after_exit(timeout=5.0):
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
