"""The captioned-shapes world of the trained toy models: its caption grammar, a procedural renderer, and a
weight-free scorer that reads an image back into the grammar's attributes.

The toy models are trained on these images and evaluated by rendering every caption and reading the
result back, so the renderer and the scorer are one module: the scorer's thresholds are documented here
(the model card quotes them) and tested against the renderer.

**Grammar.** `a {size} {color} {shape} at the {position}` with size in SIZES (2), color in COLORS (6),
shape in SHAPES (3) and position in POSITIONS (a 3×3 grid, 9): 324 captions. CAPTIONS (and ATTRIBUTES,
in the same order) enumerate them with size varying slowest and position fastest, i.e. the order of
`itertools.product(SIZES, COLORS, SHAPES, POSITIONS)`; caption `i` of a run always means the same
caption.

**Images.** One object on a uniform dark background (each channel uniform in 0..BACKGROUND_MAX). The
object's bounding box is square, centred on its grid cell's centre (at 0.2, 0.5 or 0.8 of the side)
plus a jitter of up to ±JITTER of the side in x and y. A small object's box is SMALL_EXTENT of the side,
a large one's LARGE_EXTENT (twice as large). A circle fills π/4 of its box, a square all of it, an
upward triangle (apex at the top centre, base along the bottom) half of it. Edges are anti-aliased
(coverage from the signed distance to the edge). Any image size works; the geometry scales with it.

**Scorer** (`read_back`), in the image's own units, so it does not depend on the renderer's exact
pixels and tolerates blurry or noisy model output:

1. Background: the per-channel median of all pixels (the object covers at most ~9% of them).
2. Contrast: per pixel, the largest channel excess over the background. Its peak is the PEAK_RANK-th
   largest value (a few hot pixels cannot set it). A peak under MIN_CONTRAST (64 of 255) means nothing
   is drawn: every attribute is None.
3. Mask: pixels whose contrast is at least MASK_FRACTION (half) of the peak — the half-maximum contour,
   which keeps a blurred shape's edges where they were — and of those the largest 8-connected blob.
   A blob smaller than MIN_AREA of the image, or wider or taller than MAX_EXTENT of the side (noise, a
   wash of colour), is no object: every attribute is None.
4. Colour: the blob's mean colour minus the background, scaled so its largest channel is 1, nearest (in
   RGB distance) of the six colours' unit vectors (1,0,0) red ... (1,0,1) magenta; None when its
   saturation (max − min) / max is under MIN_SATURATION (0.35), i.e. greyish.
5. Position: the blob's centroid → the 3×3 cell (thirds of the width and height).
6. Size: the bounding box's larger side over the image's side: `small` under SIZE_SPLIT (0.22, between
   0.15 and 0.30), else `large`.
7. Shape: None unless the blob is solid and squat — its fill ratio (area over its bounding box's area;
   circle ≈ π/4, square 1, triangle 1/2) at least MIN_FILL (0.35) and its box's long side at most
   MAX_ASPECT (1.6) times its short side. Then, from the cumulants of the soft mass near the blob
   (contrast over peak, clipped to [0, 1], on the blob grown by SOFT_MARGIN (2) pixels, values under
   WEIGHT_FLOOR (0.1) dropped), which a blur changes far less than a fill ratio: `triangle` if the
   skewness of y is at most −TRIANGLE_SKEW (−0.2; an upward triangle's is −0.57, a circle's and a
   square's 0), None if at least +0.2 (pointing down, lopsided); else `square` if the fourth cumulant
   along the diagonals is under SQUARE_CORNERS (0.75) of that along the axes (a square's is 1/2, a
   circle's 1), else `circle`. (A plain fill-ratio rule reads crisp renders perfectly but misreads
   small triangles under a blur of radius 1, whose cut-off apex raises their fill towards a circle's.)

Torch-free (numpy only): the trainer, the eval command and the explorer's prompt warning share it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dit_explore.engine.core.text import shown

SIZES: tuple[str, ...] = ("small", "large")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "cyan", "magenta")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
ATTRIBUTE_NAMES: tuple[str, ...] = ("size", "color", "shape", "position")

# Rendered colours: saturated primaries and their pairs, a little short of the range's ends.
_ON, _OFF = 240, 20
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (_ON, _OFF, _OFF),
    "green": (_OFF, _ON, _OFF),
    "blue": (_OFF, _OFF, _ON),
    "yellow": (_ON, _ON, _OFF),
    "cyan": (_OFF, _ON, _ON),
    "magenta": (_ON, _OFF, _ON),
}
# The hue each colour name stands for, as the scorer compares it (largest channel 1).
_COLOR_UNIT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float64)

# Geometry, in fractions of the image side.
CELL_CENTERS: tuple[float, float, float] = (0.2, 0.5, 0.8)
JITTER = 0.04  # largest offset of the object's centre, each axis
SMALL_EXTENT = 0.15  # side of a small object's bounding box
LARGE_EXTENT = 0.30
BACKGROUND_MAX = 32  # background channels are uniform in 0..BACKGROUND_MAX

# Scorer thresholds (see the module docstring).
MIN_CONTRAST = 64.0
PEAK_RANK = 8
MASK_FRACTION = 0.5
MIN_AREA = 0.002  # of the image's pixels (8 px at 64×64)
MAX_EXTENT = 0.5
MIN_SATURATION = 0.35
SIZE_SPLIT = 0.22
MIN_FILL = 0.35
MAX_ASPECT = 1.6
SOFT_MARGIN = 2
WEIGHT_FLOOR = 0.1
TRIANGLE_SKEW = 0.2
SQUARE_CORNERS = 0.75

CHANCE: dict[str, float] = {"size": 1 / 2, "color": 1 / 6, "shape": 1 / 3, "position": 1 / 9, "all": 1 / 324}


@dataclass(frozen=True)
class Attributes:
    """One caption's meaning: the object's size, colour, shape and grid position."""

    size: str
    color: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"


ATTRIBUTES: tuple[Attributes, ...] = tuple(Attributes(*combo) for combo in itertools.product(SIZES, COLORS, SHAPES, POSITIONS))
CAPTIONS: tuple[str, ...] = tuple(a.caption for a in ATTRIBUTES)
WORDS: frozenset[str] = frozenset(word for caption in CAPTIONS for word in caption.split())
_BY_CAPTION = {a.caption: a for a in ATTRIBUTES}


def parse_caption(text: str) -> Attributes:
    """The attributes of a caption of the grammar (case and runs of whitespace ignored); ValueError, one
    line, for anything else."""
    normal = " ".join(text.lower().split())
    found = _BY_CAPTION.get(normal)
    if found is None:
        raise ValueError(f"not a shapes caption: '{shown(text)}' (expected 'a {{size}} {{color}} {{shape}} at the "
                         "{position}')")
    return found


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` (letters only, case ignored) that the grammar never uses, each once, in order
    of first appearance: a toy model has never seen them, so the explorer warns about them."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[a-z]+", prompt.lower()):
        if word not in WORDS:
            seen.setdefault(word)
    return list(seen)


# ---------------------------------------------------------------------------------------------- rendering


def _coverage(shape_idx: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: np.ndarray, size: int) -> np.ndarray:
    """Per-pixel coverage in [0, 1], [N, size, size] float32, of N objects given by shape index (into
    SHAPES), centre and half extent in pixels. Anti-aliased from a signed distance d (negative inside):
    coverage = clip(0.5 − d, 0, 1)."""
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    x = grid[None, None, :] - cx[:, None, None].astype(np.float32)
    y = grid[None, :, None] - cy[:, None, None].astype(np.float32)
    h = half[:, None, None].astype(np.float32)
    dist = np.empty((len(shape_idx), size, size), dtype=np.float32)
    for k in range(len(SHAPES)):
        sel = np.flatnonzero(shape_idx == k)
        if not len(sel):
            continue
        xs, ys, hs = x[sel], y[sel], h[sel]
        if SHAPES[k] == "circle":
            dist[sel] = np.sqrt(xs * xs + ys * ys) - hs
        elif SHAPES[k] == "square":
            dist[sel] = np.maximum(np.abs(xs), np.abs(ys)) - hs
        else:  # triangle: apex (0, -h), base from (-h, h) to (h, h); distance to the nearest side's line
            slanted = (2 * np.abs(xs) - ys - hs) / np.sqrt(np.float32(5))  # sides through the apex, outward normal
            dist[sel] = np.maximum(slanted, ys - hs)
    return np.clip(0.5 - dist, 0.0, 1.0)


def _compose(attrs: Sequence[Attributes], jitter: np.ndarray, background: np.ndarray, size: int) -> np.ndarray:
    """Images [N, size, size, 3] uint8 of `attrs` with per-image jitter [N, 2] and background [N, 3]."""
    pos = np.array([POSITIONS.index(a.position) for a in attrs])
    cx = (np.array(CELL_CENTERS)[pos % 3] + JITTER * jitter[:, 0]) * size
    cy = (np.array(CELL_CENTERS)[pos // 3] + JITTER * jitter[:, 1]) * size
    half = np.array([LARGE_EXTENT if a.size == "large" else SMALL_EXTENT for a in attrs]) * size / 2
    cover = _coverage(np.array([SHAPES.index(a.shape) for a in attrs]), cx, cy, half, size)[..., None]
    color = np.array([COLOR_RGB[a.color] for a in attrs], dtype=np.float32)[:, None, None, :]
    back = background.astype(np.float32)[:, None, None, :]
    return np.rint(back + (color - back) * cover).astype(np.uint8)


def render(attrs: Attributes, *, size: int = 64, jitter: tuple[float, float] = (0.0, 0.0),
           background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """One image [size, size, 3] uint8 of `attrs`; `jitter` (dx, dy) in [-1, 1] moves the object by up to
    JITTER of the side; `background` is the dark background colour."""
    if not all(-1.0 <= j <= 1.0 for j in jitter):
        raise ValueError(f"jitter must be in [-1, 1], got {jitter}")
    return _compose([attrs], np.array([jitter], dtype=np.float64), np.array([background]), size)[0]


RENDER_CHUNK = 512  # images per vectorised pass: bounds the float32 temporaries (~8 MB each at 64×64)


def render_batch(attrs_list: Sequence[Attributes], rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Images [N, size, size, 3] uint8 of `attrs_list`, each with its own uniform random jitter and
    background (channels uniform in 0..BACKGROUND_MAX), drawn from `rng`: the training distribution."""
    n = len(attrs_list)
    jitter = rng.uniform(-1.0, 1.0, size=(n, 2))
    background = rng.integers(0, BACKGROUND_MAX, size=(n, 3), endpoint=True)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, RENDER_CHUNK):
        stop = min(n, start + RENDER_CHUNK)
        out[start:stop] = _compose(attrs_list[start:stop], jitter[start:stop], background[start:stop], size)
    return out


# ------------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Reading:
    """What the scorer reads off one image: each attribute, or None where it cannot tell."""

    size: str | None
    color: str | None
    shape: str | None
    position: str | None

    def matches(self, attrs: Attributes) -> dict[str, bool]:
        """Per attribute name, whether this reading agrees with `attrs` (None never agrees)."""
        return {name: getattr(self, name) == getattr(attrs, name) for name in ATTRIBUTE_NAMES}


NOTHING = Reading(None, None, None, None)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask, as a boolean mask; of equally large ones, the
    one whose first pixel comes first in raster order. Vectorized: every masked pixel starts labelled with
    its own flat index, then repeatedly takes the smallest label in its 3x3 neighbourhood within the mask and
    jumps to its label's label, until nothing changes; every pixel then holds the smallest index of its
    component. (A breadth-first search in Python took 14 ms on a 64-pixel toy image, and the sweep reads
    back every image it makes.)"""
    h, w = mask.shape
    if not mask.any():
        return np.zeros_like(mask)
    outside = h * w
    label = np.where(mask, np.arange(outside).reshape(h, w), outside)
    while True:
        padded = np.pad(label, 1, constant_values=outside)
        least = label.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(least, padded[dy:dy + h, dx:dx + w], out=least)
        least[~mask] = outside
        flat = least.ravel()
        inside = flat < outside
        flat[inside] = flat[flat[inside]]  # a label's label is in the same component and no larger
        if np.array_equal(least, label):
            break
        label = least
    counts = np.bincount(label[mask])
    return label == int(np.argmax(counts))


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """`mask` grown by `steps` pixels (4-neighbourhood per step)."""
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _shape(level: np.ndarray, blob: np.ndarray) -> str | None:
    """The shape of the object whose half-maximum blob is `blob`, from the cumulants of its soft mass
    (`level`: contrast over peak, clipped to [0, 1], near the blob). A Gaussian blur adds nothing to the
    third and fourth cumulants, so these hold for soft output: an upward triangle's mass is skewed
    towards its base (skewness of y ≈ −0.57; circle and square 0); a square's fourth cumulant along the
    diagonals is half that along the axes, a circle's the same in every direction."""
    weight = np.where(_dilate(blob, SOFT_MARGIN), np.clip(level, 0.0, 1.0), 0.0)
    weight[weight < WEIGHT_FLOOR] = 0.0
    mass = weight.sum()
    yy, xx = np.indices(weight.shape, dtype=np.float64)
    y = yy - (weight * yy).sum() / mass
    x = xx - (weight * xx).sum() / mass

    def cumulants(v: np.ndarray) -> tuple[float, float, float]:
        k2 = float((weight * v**2).sum() / mass)
        return k2, float((weight * v**3).sum() / mass), float((weight * v**4).sum() / mass) - 3 * k2 * k2

    k2y, k3y, k4y = cumulants(y)
    skew = k3y / k2y**1.5 if k2y > 0 else 0.0
    if skew <= -TRIANGLE_SKEW:
        return "triangle"
    if skew >= TRIANGLE_SKEW:
        return None  # pointing down, or lopsided: none of the grammar's shapes
    axes = k4y + cumulants(x)[2]
    diagonals = cumulants((x + y) / np.sqrt(2))[2] + cumulants((x - y) / np.sqrt(2))[2]
    if axes >= 0:
        return None  # not flat-topped like a solid disc or square (a fourth cumulant of a solid shape is < 0)
    return "square" if diagonals / axes < SQUARE_CORNERS else "circle"


def read_back(image: np.ndarray) -> Reading:
    """Read one image [H, W, 3] uint8 back into the grammar's attributes (method and thresholds: the
    module docstring)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
    img = image.astype(np.float64)
    h, w = img.shape[:2]
    background = np.median(img.reshape(-1, 3), axis=0)
    contrast = (img - background).max(axis=2)
    flat = contrast.ravel()
    peak = float(np.partition(flat, len(flat) - PEAK_RANK)[len(flat) - PEAK_RANK]) if len(flat) >= PEAK_RANK else 0.0
    if peak < MIN_CONTRAST:
        return NOTHING
    blob = _largest_blob(contrast >= MASK_FRACTION * peak)
    ys, xs = np.nonzero(blob)
    area = len(ys)
    box_h, box_w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    extent = max(box_h / h, box_w / w)
    if area < MIN_AREA * h * w or extent > MAX_EXTENT:
        return NOTHING

    excess = np.clip(img[blob].mean(axis=0) - background, 0.0, None)
    top = float(excess.max())
    color = None
    if top > 0 and (top - float(excess.min())) / top >= MIN_SATURATION:
        color = COLORS[int(np.argmin(((_COLOR_UNIT - excess / top) ** 2).sum(axis=1)))]

    column = min(2, int(3 * (xs.mean() + 0.5) / w))
    row = min(2, int(3 * (ys.mean() + 0.5) / h))

    solid = area / (box_h * box_w) >= MIN_FILL and max(box_h, box_w) / min(box_h, box_w) <= MAX_ASPECT
    shape = _shape(contrast / peak, blob) if solid else None
    return Reading(size="small" if extent < SIZE_SPLIT else "large", color=color, shape=shape,
                   position=POSITIONS[3 * row + column])


@dataclass(frozen=True)
class Scores:
    """How many of `n` images read back each attribute (and all four) as captioned."""

    n: int
    correct: dict[str, int]  # by attribute name, and "all"

    def accuracy(self, name: str) -> float:
        return self.correct[name] / self.n if self.n else 0.0

    @property
    def chance(self) -> dict[str, float]:
        """Accuracy of guessing uniformly: 1/2 size, 1/6 colour, 1/3 shape, 1/9 position, 1/324 all."""
        return dict(CHANCE)

    def to_json(self) -> dict[str, Any]:
        names = (*ATTRIBUTE_NAMES, "all")
        return {"n": self.n, "correct": {k: self.correct[k] for k in names},
                "accuracy": {k: self.accuracy(k) for k in names}, "chance": self.chance}


def score(images: Sequence[np.ndarray] | np.ndarray, captions: Sequence[str]) -> Scores:
    """Read each image back and compare it with its caption (ValueError if a caption is not in the
    grammar or the counts differ)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return tally([read_back(np.asarray(image)) for image in images], captions)


def tally(readings: Sequence[Reading], captions: Sequence[str]) -> Scores:
    """Scores of readings already taken (the eval command keeps each image's reading for its report)."""
    if len(readings) != len(captions):
        raise ValueError(f"{len(readings)} readings but {len(captions)} captions")
    correct = dict.fromkeys((*ATTRIBUTE_NAMES, "all"), 0)
    for reading, caption in zip(readings, captions):
        hits = reading.matches(parse_caption(caption))
        for name, hit in hits.items():
            correct[name] += hit
        correct["all"] += all(hits.values())
    return Scores(n=len(readings), correct=correct)
