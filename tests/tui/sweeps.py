"""Hand-made sweep folders for the TUI's tests: results.json as engine/sweep.py writes it for a skip-each
sweep (only the fields the explorer reads), with a plot and a contact sheet of known sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from dit_explore.engine.core.layout import Layout

PLOT_SIZE = (240, 80)  # wide, as matplotlib's are
SHEET_SIZE = (60, 240)  # tall: one column of images


def write_sweep(folder: Path, model: str, layout: Layout, psnr: dict[str, list[float | str | None]], *,
                prompt: str = "a red square", kind: str = "skip-each") -> Path:
    """A finished sweep in `folder`: the full model, then each block of `psnr` (per stack, per block: a PSNR
    in dB, None for an image identical to the full model's, or a string: the item's error)."""
    folder.mkdir(parents=True)
    rows: list[dict[str, Any]] = [{"plan": "full model", "series": "full model", "x": None, "prompt": prompt,
                                   "seed": 0, "error": None, "identical": True, "psnr": None, "ssim": 1.0,
                                   "mad": 0.0, "image": "images/full.png"}]
    for stack in layout.stacks:
        for k, value in enumerate(psnr[stack.name]):
            error = value if isinstance(value, str) else None
            number = value if isinstance(value, float) else None
            rows.append({"plan": f"{stack.name}: skip {k}", "series": stack.name, "x": k, "prompt": prompt, "seed": 0,
                         "error": error, "identical": value is None, "psnr": number,
                         "ssim": None if error else 1.0 if value is None else 0.5, "mad": None if error else 1.0,
                         "image": None if error else f"images/{stack.name}-{k}.png"})
    record = {"model": model, "kind": kind, "prompts": [prompt], "seeds": [0], "plans": [], "rows": rows,
              "summary": []}
    (folder / "results.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    (folder / "sweep.json").write_text(json.dumps({"model": model, "kind": kind}), encoding="utf-8")
    Image.new("RGB", PLOT_SIZE, (240, 240, 240)).save(folder / "plot.png")
    Image.new("RGB", SHEET_SIZE, (20, 20, 20)).save(folder / "contact_sheet.png")
    return folder
