"""Lint (ruff) and types (mypy) over the whole tree, configured in pyproject.toml: part of the test
command, so CI runs them. mypy is strict on the typed protocol, the engine client and the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    # mypy resolves imports from files, not through the editable install's import hook: give it the
    # installed layout (dit_explore/engine, dit_explore/tui, ...) as links to the card's folders.
    package = tmp_path / "src" / "dit_explore"
    package.mkdir(parents=True)
    for folder in ("engine", "tui", "themes", "saved_plans"):
        (package / folder).symlink_to(ROOT / folder, target_is_directory=True)
    env = {**os.environ, "MYPYPATH": str(tmp_path / "src")}
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp_path / "cache"), "--python-executable", sys.executable,
                          "-p", "dit_explore.engine", "-p", "dit_explore.tui"],
                         cwd=tmp_path / "src", capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout
