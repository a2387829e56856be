"""Contact sheets: images in a labelled grid, and the Painters strategies of the toy models as one.

    python -m dit_explore.engine.sheet [MODEL ...] --out PNG [--caption TEXT ...] [--scale K] [--device cpu]

`contact_sheet` lays out rows × columns of images with row labels on the left, column labels above and,
optionally, column groups (a title over several columns). The command draws the study on the toy models:
one row for the full model and one per saved plan of the study (saved_plans/MODEL/*.plan.toml: skip first
block, skip middle, middle repeat, reverse, parallel, looped parallel), one group of columns per model,
one column per caption. Every image is generated as `dit-explore eval` generates it (through Generator,
the model's defaults, caption i of the shapes grammar with seed i), so a cell is the very image that eval
scored for that caption and plan. A cell's corner is green when the weight-free scorer reads every
attribute of its caption back, red when it does not.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dit_explore.engine.core.shapes import ATTRIBUTES, CAPTIONS, read_back
from dit_explore.engine.eval import for_scoring

BACKGROUND = (18, 18, 20)
TEXT = (225, 225, 225)
MUTED = (150, 150, 155)
RIGHT, WRONG = (60, 200, 90), (230, 60, 60)
GAP = 4  # pixels between cells
PAD = 8  # around text

# Varied captions: every colour but one, all shapes, both sizes, corners, edges and the centre.
DEFAULT_CAPTIONS = ("a large red circle at the top left", "a small green square at the center",
                    "a large blue triangle at the bottom", "a small yellow triangle at the right",
                    "a large magenta square at the top right")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _lines(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """`text` wrapped to lines that fit `width` pixels in `font`."""
    for chars in range(max(len(text), 1), 0, -1):
        lines = textwrap.wrap(text, chars) or [""]
        if all(font.getlength(line) <= width for line in lines):
            return lines
    return textwrap.wrap(text, 1)


def contact_sheet(cells: Sequence[Sequence[Image.Image]], rows: Sequence[str], columns: Sequence[str],
                  groups: Sequence[tuple[str, int]] = (), marks: Sequence[Sequence[bool | None]] = (),
                  scale: int = 1, footer: str = "") -> Image.Image:
    """`cells[r][c]` (all the same size) in a grid, scaled `scale` times (nearest: pixels stay pixels),
    `rows` labelled on the left, `columns` above; `groups` (title, number of columns) above the column
    labels, left to right; `marks[r][c]` colours a cell's corner green (True) or red (False)."""
    if len(cells) != len(rows) or any(len(line) != len(columns) for line in cells):
        raise ValueError(f"{len(rows)} row and {len(columns)} column labels for a "
                         f"{len(cells)}x{len(cells[0]) if cells else 0} grid")
    if groups and sum(n for _, n in groups) != len(columns):
        raise ValueError("the column groups do not add up to the columns")
    w, h = cells[0][0].size
    w, h = w * scale, h * scale
    font, bold = _font(12), _font(14)
    line = int(font.getbbox("Ag")[3]) + 2
    left = PAD + max(max((font.getlength(t) for r in rows for t in _lines(r, font, 180)), default=0), 0)
    left = int(left) + PAD
    column_lines = [_lines(c, font, w) for c in columns]
    header = max((len(x) for x in column_lines), default=0) * line + PAD
    group_row = (int(bold.getbbox("Ag")[3]) + 2 * PAD) if groups else PAD
    # Column positions: an extra gap between groups.
    xs, x, starts = [], left, {sum(n for _, n in groups[:k]) for k in range(1, len(groups))}
    for c in range(len(columns)):
        x += 3 * GAP if c in starts else 0
        xs.append(x)
        x += w + GAP
    width, top = x + PAD, group_row + header
    footer_lines = _lines(footer, font, width - 2 * PAD) if footer else []
    foot = len(footer_lines) * line + PAD if footer else 0
    height = top + len(rows) * (h + GAP) + PAD + foot
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    first = 0
    for title, n in groups:
        x0, x1 = xs[first], xs[first + n - 1] + w
        draw.text(((x0 + x1) / 2, PAD), title, fill=TEXT, font=bold, anchor="mt")
        draw.line([(x0, group_row - PAD // 2), (x1, group_row - PAD // 2)], fill=MUTED)
        first += n
    for c, text in enumerate(column_lines):
        for k, piece in enumerate(text):
            draw.text((xs[c] + w / 2, group_row + k * line), piece, fill=MUTED, font=font, anchor="mt")
    for r, label in enumerate(rows):
        y = top + r * (h + GAP)
        pieces = _lines(label, font, 180)
        y_text = y + (h - len(pieces) * line) / 2
        for k, piece in enumerate(pieces):
            draw.text((PAD, y_text + k * line), piece, fill=TEXT, font=font)
        for c, image in enumerate(cells[r]):
            sheet.paste(image.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (xs[c], y))
            mark = marks[r][c] if marks else None
            if mark is not None:
                size = max(6, w // 16)
                draw.rectangle([xs[c] + w - size, y, xs[c] + w - 1, y + size - 1], fill=RIGHT if mark else WRONG)
    for k, piece in enumerate(footer_lines):
        draw.text((PAD, height - foot + k * line), piece, fill=MUTED, font=font)
    return sheet


def strategy_sheet(models: Sequence[str], captions: Sequence[str], scale: int, device: str,
                   say: Callable[[str], None] = print) -> Image.Image:
    """The full model and the study's saved plans of each model, on each caption (see the module)."""
    from dit_explore.engine import headless
    from dit_explore.engine.core import plan as plans
    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.core.study import shipped_plans_dir
    from dit_explore.engine.generate import Generator

    indices = [CAPTIONS.index(c) for c in captions]
    columns: list[list[Image.Image]] = []  # per model and caption: the images of every row
    column_marks: list[list[bool]] = []
    labels: list[str] = []
    for model in models:
        source = resolve(model)
        files = sorted((shipped_plans_dir() / model).glob(f"*{plans.PLAN_SUFFIX}"))
        if not files:
            raise ValueError(f"{model}: no saved plans in {shipped_plans_dir() / model}")
        study = [plans.load(f) for f in files]
        names = ["full model"] + [(p.name or f.stem).split(": ", 1)[-1] for p, f in zip(study, files)]
        if labels and len(labels) != len(names):
            raise ValueError(f"{model} has {len(names) - 1} saved plans, {models[0]} {len(labels) - 1}")
        labels = labels or names
        loaded = headless._load(source, headless.ModelOptions(device=device))
        generator = Generator(loaded)
        settings = resolve_settings(source.defaults)
        for i in indices:
            images, marks = [], []
            for plan in [plans.Plan(), *study]:
                result = generator.generate(CAPTIONS[i], replace(settings, seed=settings.seed + i), plan)
                assert result.image is not None
                images.append(result.image)
                hits = read_back(for_scoring(result.image)).matches(ATTRIBUTES[i])
                marks.append(all(hits.values()))
            columns.append(images)
            column_marks.append(marks)
        say(f"{model}: {len(indices)} captions x {len(study) + 1} plans")
    cells = [[column[r] for column in columns] for r in range(len(labels))]
    marks_by_row = [[m[r] for m in column_marks] for r in range(len(labels))]
    return contact_sheet(cells, labels, [c.removeprefix("a ") for c in captions] * len(models),
                         groups=[(m, len(captions)) for m in models], marks=marks_by_row, scale=scale,
                         footer="corner: green = the scorer reads every attribute of the caption back, red = not; "
                                "caption i runs with seed i")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.engine.sheet",
                                     description="The study's saved plans on the toy models, as one contact sheet.")
    parser.add_argument("models", nargs="*", default=["toy-flux", "toy-sd3", "toy-auraflow"], metavar="MODEL")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--caption", action="append", help=f"a caption of the grammar (repeatable; default: "
                                                           f"{len(DEFAULT_CAPTIONS)} varied ones)")
    parser.add_argument("--scale", type=int, default=2, help="pixels per image pixel (default 2)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    captions = args.caption or list(DEFAULT_CAPTIONS)
    unknown = [c for c in captions if c not in CAPTIONS]
    if unknown or not 1 <= args.scale <= 16:
        print(f"error: {unknown[0]!r} is not a caption of the shapes grammar" if unknown
              else f"error: --scale {args.scale}: must be between 1 and 16", file=sys.stderr)
        return 2
    from dit_explore.engine.core.resolve import ModelError
    from dit_explore.engine.core.runs import write_atomic
    from dit_explore.engine.headless import UsageError

    try:
        sheet = strategy_sheet(args.models, captions, args.scale, args.device)
    except (ValueError, ModelError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, buffer.getvalue())
    except OSError as exc:
        print(f"error: --out {args.out}: cannot write it: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
