"""The captioned-shapes world of the toy models: the grammar, the renderer's geometry (measured off its
pixels, not through the scorer), and the scorer against captions it must read, renders it must reject,
and images that carry no caption at all."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dit_explore.engine.core.shapes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    CAPTIONS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    WORDS,
    Attributes,
    parse_caption,
    read_back,
    render,
    render_batch,
    score,
    unknown_words,
)

VALUES = {"size": SIZES, "color": COLORS, "shape": SHAPES, "position": POSITIONS}


def test_the_grammar_has_324_captions_size_slowest_position_fastest() -> None:
    assert len(CAPTIONS) == len(set(CAPTIONS)) == 2 * 6 * 3 * 9 == 324
    assert CAPTIONS[0] == "a small red circle at the top left"
    assert CAPTIONS[1] == "a small red circle at the top"
    assert CAPTIONS[9] == "a small red square at the top left"
    assert CAPTIONS[27] == "a small green circle at the top left"
    assert CAPTIONS[162] == "a large red circle at the top left"
    assert CAPTIONS[-1] == "a large magenta triangle at the bottom right"
    assert [a.caption for a in ATTRIBUTES] == list(CAPTIONS)


def test_words_are_exactly_the_grammars() -> None:
    assert {"a", "at", "the", "small", "large", "red", "green", "blue", "yellow", "cyan", "magenta", "circle",
            "square", "triangle", "top", "bottom", "left", "right", "center"} == WORDS


def test_every_caption_parses_back_to_its_attributes() -> None:
    for caption, attrs in zip(CAPTIONS, ATTRIBUTES):
        assert parse_caption(caption) == attrs
    assert parse_caption("  A Large  BLUE square at the\tbottom right ") == Attributes("large", "blue", "square",
                                                                                        "bottom right")


@pytest.mark.parametrize("text", ["", "a red circle", "a small red circle at the middle",
                                  "a small red circle at the top left please", "a small purple circle at the top",
                                  "the small red circle at the top", "a small red circle\nat the top\x1b[2J"])
def test_a_text_outside_the_grammar_is_one_line_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a shapes caption") as info:
        parse_caption(text)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_unknown_words_each_once_in_order() -> None:
    assert unknown_words("a small red circle at the top left") == []
    assert unknown_words("A LARGE Cyan square, at the center!") == []
    assert unknown_words("a lighthouse at dusk, a red lighthouse") == ["lighthouse", "dusk"]
    assert unknown_words("a purple-ish circle") == ["purple", "ish"]


def object_mask(image: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Coverage of the object per pixel, from the channels the object's colour turns fully on."""
    return (image.astype(float) - np.array(background)).max(axis=2) / (240 - min(background))


@pytest.mark.parametrize(("shape", "fill"), [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_rendered_area_is_the_shapes_area(shape: str, fill: float) -> None:
    for size, extent in (("small", 0.15 * 64), ("large", 0.30 * 64)):
        image = render(Attributes(size, "green", shape, "center"), background=(10, 10, 10))
        area = object_mask(image, (10, 10, 10)).sum()
        assert area == pytest.approx(fill * extent**2, rel=0.03)


def test_large_is_twice_small_and_jitter_moves_by_four_hundredths() -> None:
    def box(image: np.ndarray) -> tuple[float, float, float, float]:
        ys, xs = np.nonzero(object_mask(image, (0, 0, 0)) > 0.5)
        return xs.min(), xs.max() + 1, ys.min(), ys.max() + 1

    x0, x1, y0, y1 = box(render(Attributes("small", "red", "square", "center")))
    big = box(render(Attributes("large", "red", "square", "center")))
    assert big[1] - big[0] == pytest.approx(2 * (x1 - x0), abs=1) and big[3] - big[2] == pytest.approx(2 * (y1 - y0), abs=1)
    assert (big[0] + big[1]) / 2 == pytest.approx(32, abs=0.5) and (big[2] + big[3]) / 2 == pytest.approx(32, abs=0.5)
    moved = box(render(Attributes("large", "red", "square", "center"), size=200, jitter=(1.0, -1.0)))
    assert (moved[0] + moved[1]) / 2 == pytest.approx(100 + 8, abs=0.5)
    assert (moved[2] + moved[3]) / 2 == pytest.approx(100 - 8, abs=0.5)
    with pytest.raises(ValueError, match="jitter"):
        render(ATTRIBUTES[0], jitter=(1.5, 0.0))


def test_the_triangle_points_up_and_positions_follow_the_grid() -> None:
    mask = object_mask(render(Attributes("large", "blue", "triangle", "center"), size=128), (0, 0, 0)) > 0.5
    widths = mask.sum(axis=1)[mask.any(axis=1)]
    assert widths[0] < widths[len(widths) // 2] < widths[-1]
    for index, position in enumerate(POSITIONS):
        ys, xs = np.nonzero(object_mask(render(Attributes("small", "red", "circle", position)), (0, 0, 0)) > 0.5)
        assert (int(xs.mean() * 3 / 64), int(ys.mean() * 3 / 64)) == (index % 3, index // 3)


def test_render_batch_draws_jitter_and_background_from_the_generator() -> None:
    attrs = list(ATTRIBUTES) * 2
    first = render_batch(attrs, np.random.default_rng(7))
    assert first.shape == (648, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_batch(attrs, np.random.default_rng(7)))
    corners = first[:, 0, 0, :]  # no object reaches a corner pixel
    assert corners.max() <= 32 and len({tuple(c) for c in corners}) > 100
    assert not np.array_equal(first[:324], first[324:])  # same captions, other jitter and background
    assert np.array_equal(render_batch(attrs[:3], np.random.default_rng(0), size=96).shape, (3, 96, 96, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_caption_reads_back(seed: int) -> None:
    images = render_batch(ATTRIBUTES, np.random.default_rng(seed))
    result = score(images, CAPTIONS)
    assert result.n == 324 and result.correct == dict.fromkeys((*ATTRIBUTE_NAMES, "all"), 324)


def test_every_caption_reads_back_at_128_pixels_and_scaled_down_to_64() -> None:
    images = render_batch(ATTRIBUTES, np.random.default_rng(3), size=128)
    assert score(images, CAPTIONS).accuracy("all") == 1.0
    small = [np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR)) for image in images]
    assert score(small, CAPTIONS).accuracy("all") == 1.0


@pytest.mark.parametrize("name", ATTRIBUTE_NAMES)
def test_a_render_with_one_attribute_swapped_fails_exactly_that_attribute(name: str) -> None:
    values = VALUES[name]
    swapped = [Attributes(**{**vars(a), name: values[(values.index(getattr(a, name)) + 1) % len(values)]})
               for a in ATTRIBUTES]
    result = score(render_batch(swapped, np.random.default_rng(4)), CAPTIONS)
    assert result.correct == {**dict.fromkeys(ATTRIBUTE_NAMES, 324), name: 0, "all": 0}


def test_blank_images_read_nothing() -> None:
    for level in (0, 20, 128, 255):
        reading = read_back(np.full((64, 64, 3), level, dtype=np.uint8))
        assert (reading.size, reading.color, reading.shape, reading.position) == (None, None, None, None)
    result = score(np.full((324, 64, 64, 3), 12, dtype=np.uint8), CAPTIONS)
    assert result.correct == dict.fromkeys((*ATTRIBUTE_NAMES, "all"), 0)


def test_noise_scores_no_better_than_chance() -> None:
    rng = np.random.default_rng(5)
    uniform = rng.integers(0, 256, size=(324, 64, 64, 3), dtype=np.uint8)
    assert score(uniform, CAPTIONS).correct == dict.fromkeys((*ATTRIBUTE_NAMES, "all"), 0)
    # Dark noise has hot spots that look like small objects; their readings are unrelated to the captions.
    dark = np.clip(rng.normal(20, 30, size=(324, 64, 64, 3)), 0, 255).astype(np.uint8)
    result = score(dark, CAPTIONS)
    for name in ATTRIBUTE_NAMES:
        p = result.chance[name]
        assert result.accuracy(name) <= p + 2 * math.sqrt(p * (1 - p) / 324), name
    assert result.correct["all"] <= 2


def test_a_grey_object_has_no_colour_but_keeps_its_geometry() -> None:
    image = render(Attributes("large", "yellow", "triangle", "bottom left"), jitter=(0.5, 0.5), background=(8, 8, 8))
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    reading = read_back(grey)
    assert (reading.size, reading.color, reading.shape, reading.position) == ("large", None, "triangle", "bottom left")


def test_blurred_and_noisy_renders_still_read_back() -> None:
    rng = np.random.default_rng(6)
    images = render_batch(list(ATTRIBUTES) * 2, rng)
    captions = list(CAPTIONS) * 2
    blurred = [np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1))) for image in images]
    assert score(blurred, captions).accuracy("all") >= 0.99
    noisy = np.clip(images + rng.normal(0, 12, size=images.shape), 0, 255).astype(np.uint8)
    assert score(noisy, captions).accuracy("all") >= 0.99


def test_scores_report_counts_accuracy_and_chance() -> None:
    images = render_batch(ATTRIBUTES[:4], np.random.default_rng(0))  # small red circles: top left, top, top right, left
    captions = ["a small red circle at the top left",  # right
                "a small red square at the top left",  # shape and position wrong
                "a small red circle at the top right",  # right
                "a large magenta triangle at the bottom right"]  # all wrong
    report = score(images, captions).to_json()
    assert report["n"] == 4
    assert report["correct"] == {"size": 3, "color": 3, "shape": 2, "position": 2, "all": 2}
    assert report["accuracy"]["shape"] == 0.5
    assert report["chance"] == {"size": 1 / 2, "color": 1 / 6, "shape": 1 / 3, "position": 1 / 9, "all": 1 / 324}
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        score(images[:2], captions[:1])
    with pytest.raises(ValueError, match="not a shapes caption"):
        score(images[:1], ["a lighthouse at dusk"])


def test_the_grammar_is_the_product_of_the_vocabularies() -> None:
    assert tuple(Attributes(*combo) for combo in itertools.product(SIZES, COLORS, SHAPES, POSITIONS)) == ATTRIBUTES


def _largest_by_search(mask: np.ndarray) -> np.ndarray:
    """The reference: a breadth-first search from each unlabelled pixel in raster order, keeping the first
    of the largest components (what the scorer did before its labelling was vectorized)."""
    from collections import deque

    h, w = mask.shape
    label = np.zeros(mask.shape, dtype=np.int32)
    best = best_size = current = 0
    for start in zip(*np.nonzero(mask)):
        if label[start]:
            continue
        current += 1
        label[start] = current
        queue, count = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            count += 1
            for ny, nx in itertools.product((y - 1, y, y + 1), (x - 1, x, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not label[ny, nx]:
                    label[ny, nx] = current
                    queue.append((ny, nx))
        if count > best_size:
            best, best_size = current, count
    return label == best if best else np.zeros_like(mask)


def test_the_largest_blob_is_the_searchs_on_random_masks_and_a_serpentine() -> None:
    from dit_explore.engine.core.shapes import _largest_blob

    rng = np.random.default_rng(7)
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        assert np.array_equal(_largest_blob(mask), _largest_by_search(mask))
    serpentine = np.zeros((33, 33), dtype=bool)  # one long path: the slowest case for label propagation
    serpentine[::4] = True
    serpentine[1::8, -1] = serpentine[2::8, -1] = serpentine[3::8, -1] = True
    serpentine[5::8, 0] = serpentine[6::8, 0] = serpentine[7::8, 0] = True
    serpentine[20:23, 10:13] = True
    assert np.array_equal(_largest_blob(serpentine), _largest_by_search(serpentine))
    assert _largest_blob(serpentine).sum() == serpentine.sum()  # the square touches row 20: one component
    two = np.zeros((6, 9), dtype=bool)
    two[1:3, 1:3] = two[1:3, 5:7] = True  # equally large: the first in raster order wins
    assert np.array_equal(_largest_blob(two), two & (np.arange(9) < 4))
    assert not _largest_blob(np.zeros((4, 4), dtype=bool)).any()
