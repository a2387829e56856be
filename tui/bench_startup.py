"""How long from launching `dit-explore MODEL` to a layer grid that takes keys, in a real terminal.

    python -m dit_explore.tui.bench_startup [MODEL] [--runs N]

Starts the explorer in a detached tmux pane N times and polls the screen every 10 ms until the grid
(a stack label) is drawn, then until the engine reports ready. Reports the median, min and max of
each. Needs tmux.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _launch_once(model: str, workdir: Path) -> tuple[float, float]:
    socket = f"dit-explore-bench-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    command = f"cd {workdir} && {sys.executable} -c 'from dit_explore.tui.cli import entry; entry()' {model} --graphics halfcell"
    start = time.perf_counter()
    subprocess.run([*tmux, "new-session", "-d", "-s", "b", "-x", "140", "-y", "44", command], check=True)
    grid = ready = float("nan")
    try:
        deadline = start + 120
        while time.perf_counter() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "b"], capture_output=True, text=True).stdout
            now = time.perf_counter() - start
            if math.isnan(grid) and " blocks · " in screen:  # the first time the grid shows
                grid = now
            if "engine  ready" in screen:
                ready = now
                break
            time.sleep(0.01)
        subprocess.run([*tmux, "send-keys", "-t", "b", "C-q"], capture_output=True)
        time.sleep(1.0)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    return grid, ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.tui.bench_startup", description=__doc__)
    parser.add_argument("model", nargs="?", default="tiny-flux")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if shutil.which("tmux") is None:
        print("tmux is needed for this benchmark", file=sys.stderr)
        return 2
    grids, readies = [], []
    with tempfile.TemporaryDirectory() as tmp:
        _launch_once(args.model, Path(tmp))  # warm the page cache (and build a tiny model) once, unmeasured
        for _ in range(args.runs):
            grid, ready = _launch_once(args.model, Path(tmp))
            grids.append(grid)
            readies.append(ready)
    for name, values in (("interactive grid", grids), ("engine ready", readies)):
        print(f"{name:>17}: median {statistics.median(values):.2f} s  (min {min(values):.2f}, max {max(values):.2f}, "
              f"{len(values)} launches of {args.model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
