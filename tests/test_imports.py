"""The process boundary holds: the shared core and the TUI never reach torch, the engine never reaches
Textual. Statically, with import-linter over every import in the tree (lazy ones inside functions
included; contracts in pyproject.toml), and at run time for the two processes a user starts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate")
FRONT_DOOR_DISPATCH = "dit_explore.tui.cli -> dit_explore.engine.headless"


def test_import_contracts_are_kept() -> None:
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()", "--no-cache"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_the_only_exception_is_the_front_doors_declared_dispatch() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ignored = [rule for contract in config["contracts"] for rule in contract.get("ignore_imports", [])]
    assert ignored == [FRONT_DOOR_DISPATCH]
    assert {c["id"] for c in config["contracts"]} == {"core-is-light", "tui-is-light", "engine-has-no-ui"}


def test_a_lazy_heavy_import_in_the_core_breaks_the_contract(tmp_path: Path) -> None:
    """The contract sees imports inside functions: a copy of the tree with one such import in the core
    fails it (so the contract above cannot pass vacuously)."""
    import shutil

    tree = tmp_path / "tree"
    for folder in ("engine", "tui"):
        shutil.copytree(ROOT / folder, tree / "dit_explore" / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    core = tree / "dit_explore" / "engine" / "core" / "plan.py"
    core.write_text(core.read_text() + "\n\ndef _sneaky() -> None:\n    import torch  # noqa: F401\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[:1] + ['--no-cache']; "
            "from importlinter.cli import lint_imports_command; lint_imports_command()")
    out = subprocess.run([sys.executable, "-c", code, str(tree)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "dit_explore.engine.core.plan -> torch" in out.stdout


def test_models_command_runs_without_torch() -> None:
    code = (
        "import sys\nfrom dit_explore.tui.cli import main\nrc = main(['models'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "flux-schnell" in out.stdout and "double 19 + single 38" in out.stdout


def test_the_explorer_process_stays_light_at_run_time() -> None:
    """What the TUI process imports when it opens the explorer (dynamic imports included)."""
    code = ("import sys\nimport dit_explore.tui.app, dit_explore.tui.cli, dit_explore.tui.session\n"
            f"print(','.join(h for h in {HEAVY!r} if h in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
