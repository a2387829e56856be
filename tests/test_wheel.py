"""A wheel that runs: build the wheel from this checkout, install it (not editable) into a fresh venv that
sees the installed dependencies but not the checkout, and use it from a folder outside the checkout:
imports, `dit-explore run` and `dit-explore models` headless, and the explorer in a real terminal (tmux).

The fresh venv gets the dependencies through a `deps.pth` naming the outer interpreter's site-packages:
path lines of a .pth are added to sys.path, but .pth files inside those folders are not processed, so the
checkout's editable finder (installed by a .pth in the outer site-packages) stays inactive there.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the import package it installs as (pyproject.toml's package-dir).
PACKAGE_DIRS = {"engine": "dit_explore/engine", "tui": "dit_explore/tui", "themes": "dit_explore/themes",
                "saved_plans": "dit_explore/saved_plans"}
# Never part of the source, at the checkout's top: build outputs, run outputs, and dot-folders (VCS,
# caches, venvs). setuptools copies whatever already lies in build/lib into the wheel, so building in the
# checkout itself could pass (or fail) on stale files from an earlier build.
_NOT_SOURCE = {"build", "dist", "runs"}
TIMEOUT = 600  # seconds: only against hangs; the suite runs on loaded machines

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, (f"{shlex.join(args)} exited {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def _ignore_non_source(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".pyc"))}
    if Path(folder).resolve() == ROOT:
        skip |= {n for n in names if n in _NOT_SOURCE or n.startswith(".")}
    return skip


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site: Path      # the venv's site-packages, where the wheel went
    outside: Path   # a working folder outside the checkout
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.venv / "bin" / "dit-explore"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # 1. The wheel, built from a clean copy of the checkout's source (see _NOT_SOURCE).
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_ignore_non_source)
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("dit_explore-*.whl")

    # 3. A venv without the checkout, with the dependencies.
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    outer = sysconfig.get_paths()
    deps = dict.fromkeys([outer["purelib"], outer["platlib"]])  # ordered, without a duplicate
    site.mkdir(parents=True, exist_ok=True)
    (site / "deps.pth").write_text("".join(f"{path}\n" for path in deps))
    # pip >= 22.3 installs into another interpreter's environment; --ignore-installed: leave the outer
    # editable install (visible through deps.pth) alone.
    _run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "install",
          "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)])

    outside = tmp / "outside"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "DIT_EXPLORE_CONFIG")}
    env |= {"DIT_EXPLORE_CACHE": str(tmp / "cache"), "DIT_EXPLORE_CONFIG": str(tmp / "no-config.toml"),
            "XDG_CONFIG_HOME": str(tmp / "config"), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "TQDM_DISABLE": "1"}
    return Installed(wheel=wheel, venv=venv, site=site.resolve(), outside=outside, env=env)


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder)


def test_the_wheel_installs_and_runs_headless(installed: Installed) -> None:
    # 2. What the wheel holds: every module and data file of the four folders, under dit_explore/ only.
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in ("dit_explore/tui/app.tcss", "dit_explore/themes/dark.toml", "dit_explore/themes/light.toml"):
        assert name in names, f"{name} is not in the wheel"
    plans = {n for n in names if n.startswith("dit_explore/saved_plans/") and n.endswith(".plan.toml")
             and n.count("/") == 3}
    assert len(plans) >= 18, f"only {len(plans)} saved plans in the wheel"
    expected = {f"dit_explore/saved_plans/{p.relative_to(ROOT / 'saved_plans').as_posix()}"
                for p in (ROOT / "saved_plans").glob("*/*.plan.toml")}
    assert expected <= plans, f"saved plans missing from the wheel: {sorted(expected - plans)}"
    toys = {f"dit_explore/engine/{p.relative_to(ROOT / 'engine').as_posix()}"
            for p in (ROOT / "engine" / "toys").rglob("*") if p.is_file()}
    assert toys <= names, f"trained toy model files missing from the wheel: {sorted(toys - names)}"
    for folder, package in PACKAGE_DIRS.items():
        sources = {f"{package}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")
                   if "__pycache__" not in p.parts}
        assert sources <= names, f"modules missing from the wheel: {sorted(sources - names)}"
    strays = sorted(n for n in names if not n.startswith("dit_explore/")
                    and not (n.startswith("dit_explore-") and n.split("/")[0].endswith(".dist-info")))
    assert strays == [], f"files outside dit_explore/ in the wheel: {strays}"

    # The console script runs the venv's interpreter (pip writes a /bin/sh trampoline for long paths).
    head = installed.script.read_text().splitlines()[:3]
    assert any(str(installed.python) in line for line in head), head

    # 4. From outside the checkout, every package is the installed one.
    probe = ("import json, importlib.resources as r, dit_explore, dit_explore.engine, dit_explore.tui, "
             "dit_explore.themes, dit_explore.saved_plans\n"
             "print(json.dumps({'dit_explore': list(dit_explore.__path__), 'engine': dit_explore.engine.__file__, "
             "'tui': dit_explore.tui.__file__, 'themes': dit_explore.themes.__file__, "
             "'saved_plans': dit_explore.saved_plans.__file__, "
             "'dark.toml': str(r.files('dit_explore.themes') / 'dark.toml'), "
             "'app.tcss': str(r.files('dit_explore.tui') / 'app.tcss')}))")
    found = json.loads(_run([str(installed.python), "-c", probe], cwd=installed.outside, env=installed.env).stdout)
    assert [Path(p).resolve() for p in found.pop("dit_explore")] == [installed.site / "dit_explore"]
    for what, path in found.items():
        assert _inside(path, installed.site) and not _inside(path, ROOT), f"{what} resolves to {path}"
        assert Path(path).is_file(), f"{what}: {path} is not a file"

    # 5. Headless: a run writes its image and run.json; `models` lists the catalog.
    out = installed.outside / "out"
    _run([str(installed.script), "run", "tiny-flux", "--prompt", "a red cube", "--out", str(out)],
         cwd=installed.outside, env=installed.env)
    assert (out / "000.png").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok", record
    models = _run([str(installed.script), "models"], cwd=installed.outside, env=installed.env).stdout
    assert "flux-schnell" in models
    # A shipped toy model loads from the installed package (its own autoencoder class included).
    if (ROOT / "engine" / "toys" / "toy-flux" / "model_index.json").is_file():
        toy_out = installed.outside / "toy"
        _run([str(installed.script), "run", "toy-flux", "--prompt", "a large red circle at the center", "--out",
              str(toy_out)], cwd=installed.outside, env=installed.env)
        assert json.loads((toy_out / "run.json").read_text())["status"] == "ok"


def _both_images(screen: str) -> bool:
    """At least 10 rows of the image pane (right of the first divider) with half-block pixels in both its
    halves: the plan's image and the baseline's, side by side."""
    rows = 0
    for line in screen.splitlines():
        if "│" not in line:
            continue
        pane = line.split("│", 1)[1]
        half = len(pane) // 2
        if all(part.count("▀") + part.count("▄") > 10 for part in (pane[:half], pane[half:])):
            rows += 1
    return rows >= 10


@needs_tmux
def test_the_installed_explorer_runs_a_plan_and_quits(installed: Installed, tmp_path: Path) -> None:
    # 6. The explorer from the venv, in a real terminal outside the checkout.
    terminal = Terminal([str(installed.script), "tiny-flux", "--graphics", "halfcell"], cwd=installed.outside,
                        env=installed.env, exit_file=tmp_path / "exit-code", width=140, height=44)
    try:
        screen = terminal.wait_for(lambda s: "engine  ready" in s, timeout=180)
        assert "double  4 blocks" in screen and "single  8 blocks" in screen
        assert terminal.engines(), "no engine process while the explorer runs"

        terminal.keys("Enter")
        screen = terminal.wait_for(lambda s: "last run" in s and ("PSNR" in s or "identical to plan" in s)
                                   and _both_images(s), timeout=180)
        assert "plan · " in screen and "baseline (identity plan)" in screen  # a result's captions
        assert "ms/step" in screen

        terminal.keys("C-q")
        assert terminal.exit_code(timeout=30) == "0", terminal.screen()
        assert terminal.engines_after_exit(timeout=20) == [], "an engine process outlived the explorer"
    finally:
        terminal.close()
