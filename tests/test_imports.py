"""The torch-free modules stay torch-free: the TUI process and `dit-explore models` depend on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT = ["engine", "engine.plan", "engine.layout", "engine.catalog", "engine.resolve", "engine.runs", "engine.sampling",
         "engine.protocol", "engine.client", "tui.cli"]
HEAVY = ["torch", "diffusers", "transformers", "textual"]


def test_shared_modules_do_not_import_heavy_libraries() -> None:
    code = (
        f"import importlib, sys\nfor m in {LIGHT!r}: importlib.import_module(m)\n"
        f"print(','.join(h for h in {HEAVY!r} if h in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_models_command_runs_without_torch() -> None:
    code = (
        "import sys\nfrom tui.cli import main\nrc = main(['models'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "flux-schnell" in out.stdout and "double 19 + single 38" in out.stdout


def test_the_explorer_app_stays_light() -> None:
    """The TUI process imports Textual, never torch/diffusers/transformers: it starts instantly."""
    code = "import sys, tui.app, tui.cli\nprint(','.join(h for h in ('torch', 'diffusers', 'transformers') if h in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
