"""Cached spans from the grid's keys: C makes the selection one reused span ("4-11@reuse"), f one forecast
span ("4-11@forecast"); both go through the edits' path (undo, the plan line, saving, rebinding); and
editing.cache composes with the other edits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve
from dit_explore.tui import editing
from dit_explore.tui.config import ConfigError, load_config
from dit_explore.tui.keys import EDITS_BY_ID
from dit_explore.tui.widgets.layer_grid import LEGEND, LEGEND_LINES, LayerGrid, _entries_to
from dit_explore.tui.widgets.plan_bar import PlanBar
from tests.tui.pilot import drive, offline_app, until

TOY = resolve("toy-flux").layout


def marked(grid: LayerGrid) -> dict[int, str]:
    """The cells drawn with a cache marker: block index -> "↻" or "↗" (the order strip's "4–11↻reuse" has
    the mode's name after its marker, so it is not read as a cell)."""
    text = "\n".join(grid.render_line(y).text for y in range(grid.size.height))
    return {int(block): mark for block, mark in re.findall(r"(\d+)([↻↗])(?![a-z])", text)}


def plan_line(app: Any) -> str:
    bar = app.query_one(PlanBar)
    return "\n".join(bar.render_line(y).text for y in range(bar.size.height))


def test_reuse_and_forecast_keys_edit_undo_and_save(tmp_path: Path) -> None:
    app = offline_app(tmp_path, model="toy-flux")

    async def scenario(pilot: Pilot[Any]) -> None:
        grid = app.query_one(LayerGrid)
        await pilot.press("down", *["right"] * 4, "v", *["right"] * 7)  # single 4-11
        assert grid.selection == ("single", 4, 11)
        await pilot.press("C")
        await pilot.pause()
        assert app.plan.order("single") == parse_order("0-3, 4-11@reuse")
        assert app.plan.order("double") is None or app.plan.order("double") == parse_order("0-5")
        assert not grid.visual
        assert marked(grid) == dict.fromkeys(range(4, 12), "↻")
        assert "4-11@reuse" in plan_line(app).replace("–", "-")
        await pilot.press("u")
        await pilot.pause()
        assert app.plan == Plan() and marked(grid) == {}
        await pilot.press("f")  # the selection stayed: forecast over the same blocks
        await pilot.pause()
        assert app.plan.order("single") == parse_order("0-3, 4-11@forecast")
        assert marked(grid) == dict.fromkeys(range(4, 12), "↗")
        assert "4-11@forecast" in plan_line(app).replace("–", "-")
        await pilot.press("u", "ctrl+r")  # redo brings it back
        await pilot.pause()
        assert app.plan.order("single") == parse_order("0-3, 4-11@forecast")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any((tmp_path / "plans").glob("*.plan.toml")))
        saved = list((tmp_path / "plans").glob("*.plan.toml"))
        assert len(saved) == 1 and "version = 2" in saved[0].read_text()
        loaded = plans.load(saved[0])
        assert loaded.orders == app.plan.orders
        assert loaded.order("single") == parse_order("0-3, 4-11@forecast")

    drive(app, scenario, hello=True)


def test_rebound_reuse_key(tmp_path: Path) -> None:
    """[keys] reuse rebinds it like any edit; taking another action's key is refused in one line."""
    app = offline_app(tmp_path, model="toy-flux", keymap={"reuse": "y"})

    async def scenario(pilot: Pilot[Any]) -> None:
        app.query_one(LayerGrid).select("single", 2, 5)
        await pilot.press("C")  # no longer bound
        await pilot.pause()
        assert app.plan == Plan()
        await pilot.press("y")
        await pilot.pause()
        assert app.plan.order("single") == parse_order("0-1, 2-5@reuse, 6-11")

    drive(app, scenario, hello=True)
    config = tmp_path / "config.toml"
    config.write_text('[keys]\nreuse = "c"\n')
    with pytest.raises(ConfigError, match=r"keys\.reuse: 'c' is also the key of clear"):
        load_config(config)


# ------------------------------------------------------------------------------------- editing.cache


def test_cache_edits_are_registered() -> None:
    assert EDITS_BY_ID["reuse"].keys == "C" and EDITS_BY_ID["forecast"].keys == "f"
    plan = EDITS_BY_ID["reuse"].apply(Plan(), TOY, "single", 11, 4)  # dragged either way
    assert plan.order("single") == parse_order("0-3, 4-11@reuse")
    plan = EDITS_BY_ID["forecast"].apply(Plan(), TOY, "single", 4, 11)
    assert plan.order("single") == parse_order("0-3, 4-11@forecast")


def test_skip_cuts_a_cached_span_into_plain_blocks() -> None:
    cached = editing.cache(Plan(), TOY, "single", 4, 11, mode="reuse")
    assert cached.order("single") == parse_order("0-3, 4-11@reuse")
    cut = editing.skip(cached, TOY, "single", 6, 7)
    assert cut.order("single") == parse_order("0-5, 8-11")
    assert [c.label() for c in editing.annotate(cut, TOY, "single")][4:9] == ["", "", "–", "–", ""]


def test_restore_and_recache() -> None:
    cached = editing.cache(Plan(), TOY, "single", 4, 11, mode="forecast")
    assert editing.restore(cached, TOY, "single", 4, 11) == Plan()
    reused = editing.cache(cached, TOY, "single", 4, 11, mode="reuse")  # the mode changes, the span stays
    assert reused.order("single") == parse_order("0-3, 4-11@reuse")
    with pytest.raises(ValueError, match="reuse or forecast"):
        editing.cache(Plan(), TOY, "single", 4, 11, mode="later")


def test_an_edit_inside_a_cached_span_stays_in_place() -> None:
    """The new units go where the cut was (before the fix: '0-5, 8-11, 6-7')."""
    reused = editing.cache(Plan(), TOY, "single", 4, 11, mode="reuse")
    assert editing.restore(reused, TOY, "single", 6, 7) == Plan()
    inner = editing.cache(reused, TOY, "single", 6, 8, mode="forecast")  # a span inside another splits it
    assert inner.order("single") == parse_order("0-5, 6-8@forecast, 9-11")


def test_legend_names_the_cache_markers_and_fits_80_columns() -> None:
    assert "↻ reused" in LEGEND_LINES[-1] and "↗ forecast" in LEGEND_LINES[-1]
    for width in (40, 78, 79, 80, 120):
        lines = _entries_to(LEGEND_LINES, width)
        assert all(len(line) <= width for line in lines), (width, lines)
        assert "  ".join(lines).split("  ") == "  ".join(LEGEND_LINES).split("  ")  # every entry, whole
    assert _entries_to(LEGEND_LINES, 78) == [LEGEND]  # one line in the grid at 80 columns
