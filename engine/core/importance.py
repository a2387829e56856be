"""What leaving each block out costs: the explorer's importance overlay, read from the results.json of a
`skip-each` sweep (engine/sweep.py writes it, for `dit-explore sweep MODEL skip-each` and for the
explorer's own sweeps alike).

A block's **cost** is how far the image moves from the full model's when that block alone is left out,
as a fraction from 0 (the same image) to 1 (as far as the scale goes), by one metric:

- `psnr` (the default): linear from 40 dB (cost 0: a difference nobody sees) down to 10 dB (cost 1:
  another image; on toy-flux, the blocks whose removal breaks the caption land near 14 dB); an image
  identical to the full model's (PSNR undefined) costs 0. PSNR is the default because it agreed best
  with what the toy scorer says was actually drawn: Spearman 0.867, against 0.849 for HaarPSI, 0.788 for
  SSIM and 0.785 for MAD (`python -m dit_explore.engine.metric_check`; docs/metric-check-2026-11-26/agreement.json,
  whose "best" is "psnr");
- `ssim`, `ms_ssim`, `haarpsi`: 1 − the value;
- `mad` (mean absolute difference, 0-255): linear from 0 (cost 0) to 64 (cost 1);
- `all_correct` (the toys' scorer): 1 − the share of captions drawn right.

Costs outside 0..1 are clipped. With several prompts or seeds, a block's cost is the mean of its items'
costs, and its value the mean of the metric over its measured items (PSNR over the non-identical ones,
as the sweep's summary). An item that failed is left out; a block whose items all failed has no cost,
and its error says why.

Torch-free: the TUI reads sweep folders with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.text import shown
from dit_explore.engine.core.userfiles import finite_number

RESULTS_JSON = "results.json"  # engine/study.py's and engine/sweep.py's names (engine side: not importable here)
SWEEP_JSON = "sweep.json"
PLOT = "plot.png"
CONTACT_SHEET = "contact_sheet.png"
KIND = "skip-each"
FULL = "full model"
PSNR_NONE, PSNR_FULL = 40.0, 10.0  # dB: cost 0 at and above the first, cost 1 at and below the second
MAD_FULL = 64.0  # mean absolute difference (0-255) of cost 1


@dataclass(frozen=True)
class Metric:
    """How one metric of a sweep's rows becomes a cost (see the module)."""

    name: str  # the rows' key
    title: str  # "PSNR"
    what: str  # what a high cost means, for the legend
    scale: str  # the mapping, in words
    cost: Callable[[float], float]  # the metric's value -> cost (unclipped)
    text: Callable[[float], str]  # the value as shown

    def clipped(self, value: float) -> float:
        return min(1.0, max(0.0, self.cost(value)))


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", "PSNR", "PSNR drop", f"{PSNR_NONE:.0f} dB = none … {PSNR_FULL:.0f} dB = full",
           lambda v: (PSNR_NONE - v) / (PSNR_NONE - PSNR_FULL), lambda v: f"PSNR {v:.1f} dB"),
    Metric("ssim", "SSIM", "SSIM loss", "1 − SSIM", lambda v: 1.0 - v, lambda v: f"SSIM {v:.3f}"),
    Metric("ms_ssim", "MS-SSIM", "MS-SSIM loss", "1 − MS-SSIM", lambda v: 1.0 - v, lambda v: f"MS-SSIM {v:.3f}"),
    Metric("haarpsi", "HaarPSI", "HaarPSI loss", "1 − HaarPSI", lambda v: 1.0 - v, lambda v: f"HaarPSI {v:.3f}"),
    Metric("mad", "MAD", "mean absolute difference", f"0 = none … {MAD_FULL:.0f} = full",
           lambda v: v / MAD_FULL, lambda v: f"MAD {v:.1f}"),
    Metric("all_correct", "all correct", "captions drawn wrong", "1 − share drawn right",
           lambda v: 1.0 - v, lambda v: f"all correct {v:.0%}"),
)}
DEFAULT_METRIC = "psnr"


@dataclass(frozen=True)
class BlockCost:
    """What leaving one block out cost (see the module)."""

    cost: float | None  # 0..1; None: nothing measured (`error` says why)
    value: float | None  # the metric's mean over the measured items; None: none has one (identical, failed)
    items: int = 0  # items measured
    identical: int = 0  # of them, images identical to the full model's
    error: str | None = None  # why there is no cost

    def describe(self, metric: Metric) -> str:
        """"PSNR 28.2 dB · cost 0.39", "identical to the full model · cost 0", "failed: out of memory"."""
        if self.cost is None:
            return f"failed: {self.error}" if self.error else "not measured"
        if self.value is None:
            value = "identical to the full model" if self.identical == self.items else "no value"
        else:
            value = metric.text(self.value)
            if self.identical:
                value += f" ({self.identical} of {self.items} identical)"
        return f"{value} · cost {self.cost:.2f}"


@dataclass(frozen=True)
class Importance:
    """The cost of leaving out each block of each stack, from one skip-each sweep."""

    folder: Path
    model: str
    metric: Metric
    prompts: tuple[str, ...]
    seeds: int
    stacks: Mapping[str, tuple[BlockCost, ...]]

    def block(self, stack: str, block: int) -> BlockCost:
        return self.stacks[stack][block]

    @property
    def legend(self) -> str:
        """What the overlay shows, in one line."""
        prompt = f'"{self.prompts[0]}"' if self.prompts else "its prompts"
        more = f" and {len(self.prompts) - 1} more prompt(s)" if len(self.prompts) > 1 else ""
        seeds = f", {self.seeds} seeds" if self.seeds > 1 else ""
        return (f"importance: {self.metric.what} when the block is left out ({self.metric.scale}), "
                f"skip-each sweep of {prompt}{more}{seeds}")

    @property
    def plot(self) -> Path | None:
        return _file(self.folder / PLOT)

    @property
    def contact_sheet(self) -> Path | None:
        return _file(self.folder / CONTACT_SHEET)


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None


def read_importance(folder: Path, model: str, layout: Layout, metric: str = DEFAULT_METRIC) -> Importance:
    """The importance of every block of `layout` from the skip-each sweep in `folder`, by `metric`. A
    folder that holds no finished sweep, a sweep of another kind, or of another model or layout is a
    ValueError of one line, naming the folder."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {shown(metric, 40)!r}: one of {', '.join(METRICS)}")
    where = shown(folder, 120)
    record = _read(folder, where)
    kind = record.get("kind")
    if kind != KIND:
        raise ValueError(f"{where}: a {shown(kind, 40)} sweep; the importance overlay reads {KIND} sweeps")
    theirs = record.get("model")
    if theirs != model:
        raise ValueError(f"{where}: a sweep of {shown(theirs, 60)}, not of {model}")
    rows = record.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{where}: {RESULTS_JSON} has no list of rows")
    by_block: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        series, x = row.get("series"), row.get("x")
        if row.get("plan") == FULL or series == FULL:
            continue
        if not isinstance(series, str) or not isinstance(x, int) or isinstance(x, bool) or x < 0:
            raise ValueError(f"{where}: a row of {RESULTS_JSON} names no stack and block ({shown(row.get('plan'), 60)})")
        by_block.setdefault((series, x), []).append(row)
    found = {name: 1 + max(x for s, x in by_block if s == name) for name, _ in by_block}
    expected = {s.name: s.blocks for s in layout.stacks}
    if found != expected or len(by_block) != layout.total_blocks:
        described = ", ".join(f"{name} {n}" for name, n in found.items()) or "none"
        raise ValueError(f"{where}: its blocks ({shown(described, 80)}) are not {model}'s ({layout.describe()})")
    chosen = METRICS[metric]
    stacks = {s.name: tuple(_cost(by_block[(s.name, k)], chosen) for k in range(s.blocks)) for s in layout.stacks}
    prompts = record.get("prompts")
    seeds = record.get("seeds")
    return Importance(folder, model, chosen,
                      tuple(str(p) for p in prompts) if isinstance(prompts, list) else (),
                      len(seeds) if isinstance(seeds, list) else 1, stacks)


def sweep_figures(folder: Path) -> tuple[str, list[tuple[str, Path]]]:
    """Any finished sweep's figures, whatever its kind or model: a one-line description of the sweep
    ("a skip-middle-n sweep of toy-flux") and its (title, file) figures that exist, plot first. A folder
    that holds no finished sweep is the ValueError `read_importance` gives."""
    where = shown(folder, 120)
    record = _read(folder, where)
    figures = [(title, path) for title, path in (("plot", _file(folder / PLOT)),
                                                 ("contact sheet", _file(folder / CONTACT_SHEET))) if path is not None]
    return f"a {shown(record.get('kind'), 40)} sweep of {shown(record.get('model'), 60)}", figures


def _read(folder: Path, where: str) -> dict[str, Any]:
    if not folder.is_dir():
        raise ValueError(f"{where}: not a folder")
    path = folder / RESULTS_JSON
    if not path.is_file():
        if (folder / SWEEP_JSON).is_file():
            raise ValueError(f"{where}: a sweep that has not finished (no {RESULTS_JSON} yet; "
                             "`dit-explore sweep --resume` finishes it)")
        raise ValueError(f"{where}: not a sweep folder (no {RESULTS_JSON})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read {RESULTS_JSON}: {shown(getattr(exc, 'strerror', None) or exc, 80)}") from None
    except (ValueError, RecursionError):
        raise ValueError(f"{where}: {RESULTS_JSON} is not JSON") from None
    if not isinstance(record, dict) or "kind" not in record:
        raise ValueError(f"{where}: {RESULTS_JSON} is not a sweep's (a study's?)")
    return record


def _number(value: Any, metric: Metric) -> float | None:
    """A row's value of the metric (all-correct is true or false: 1 or 0), or None."""
    if isinstance(value, bool):
        return float(value) if metric.name == "all_correct" else None
    if finite_number(value):
        return float(value)
    return None


def _cost(rows: list[dict[str, Any]], metric: Metric) -> BlockCost:
    """One block's cost over its items (see the module)."""
    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return BlockCost(None, None, error=shown(rows[0].get("error") if rows else "not in the sweep", 120))
    costs, values, identical = [], [], 0
    for row in ok:
        if row.get("identical") is True:
            identical += 1
            costs.append(0.0)
            if metric.name != "psnr":  # PSNR is undefined for an identical image; the others have a value
                value = _number(row.get(metric.name), metric)
                if value is not None:
                    values.append(value)
            continue
        value = _number(row.get(metric.name), metric)
        if value is not None:
            values.append(value)
            costs.append(metric.clipped(value))
    if not costs:
        return BlockCost(None, None, len(ok), identical, error=f"no {metric.title} in the sweep")
    return BlockCost(sum(costs) / len(costs), sum(values) / len(values) if values else None, len(ok), identical)
