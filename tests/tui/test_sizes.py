"""The explorer's layout at the terminal sizes people have: what is on screen, where the focus goes, where
messages go and what the footer keeps, from 80x24 up; and the one note below that.

"On screen" is measured, not assumed: a widget's region as the compositor clips it (by its containers and
by the screen), non-empty and overlapping none of the others. Against the stub engine, on flux-schnell
(19 + 38 blocks: the tallest grid of the shipped families).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from textual.errors import NoWidget
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Footer, Static
from textual.widgets._footer import FooterKey
from textual.widgets._toast import Toast

from dit_explore.tui.app import ExplorerApp
from tests.tui.pilot import drive, offline_app, until

SIZES = [(80, 24), (100, 30), (120, 36), (139, 40), (140, 40), (200, 60)]
PLAN_VIEW = ("#grid", "#plan-bar", "#prompt")
IMAGES_VIEW = ("#images", "#status", "#history")
ALWAYS = ("help", "run", "quit")


def make_app(tmp_path: Path) -> ExplorerApp:
    return offline_app(tmp_path, "flux-schnell")  # the real layout: 19 + 38 blocks


def on_screen(app: ExplorerApp, widget: Widget) -> Region:
    """The part of `widget` the screen shows (clipped by every container); empty if none."""
    try:
        return app.screen.find_widget(widget).visible_region
    except NoWidget:
        return Region()


def footer_keys(app: ExplorerApp) -> dict[str, Region]:
    """Footer entries on screen, by what they say (their description), with the part of them that shows."""
    footer = app.query_one(Footer)
    shown = {key.description: on_screen(app, key) for key in footer.query(FooterKey)}
    return {words: region for words, region in shown.items() if region}


async def assert_laid_out(pilot: Pilot[Any], app: ExplorerApp, size: tuple[int, int],
                          selectors: tuple[str, ...], footer: tuple[str, ...] = ()) -> None:
    """Each widget and the footer's help, run and quit (and FOOTER's entries): whole on screen, not empty,
    no two overlapping. The footer recomposes a frame or two after a change of size or focus (later on a
    loaded machine), so its entries are waited for (2 s at most) before anything is measured."""
    wanted = ALWAYS + footer
    with contextlib.suppress(AssertionError):  # the assertions below say what is missing
        await until(pilot, lambda: all(action in footer_keys(app) for action in wanted), timeout=2)
    screen = Region(0, 0, *size)
    regions = {selector: on_screen(app, app.query_one(selector)) for selector in selectors}
    keys = footer_keys(app)
    for action in wanted:
        assert action in keys, f"{size}: the footer does not show {action!r} (it shows {sorted(keys)})"
        regions[f"footer {action}"] = keys[action]
    for name, region in regions.items():
        assert region, f"{size}: {name} is not on screen"
        assert screen.contains_region(region), f"{size}: {name} at {region} is not inside the screen"
    names = list(regions)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not regions[a].overlaps(regions[b]), f"{size}: {a} {regions[a]} overlaps {b} {regions[b]}"


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_everything_is_on_screen_at_every_size(tmp_path: Path, size: tuple[int, int]) -> None:
    """Wide: the plan and the images side by side. Narrow: one view at a time, f2 to the other and back."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        if size[0] >= app.WIDE:
            await assert_laid_out(pilot, app, size, PLAN_VIEW + IMAGES_VIEW)
            return
        await assert_laid_out(pilot, app, size, PLAN_VIEW, footer=("images",))  # it offers the other view
        await pilot.press("f2")
        await pilot.pause()
        await assert_laid_out(pilot, app, size, IMAGES_VIEW, footer=("plan",))
        assert not on_screen(app, app.query_one("#grid"))
        assert app.focused is app.query_one("#history")
        await pilot.press("f2")
        await pilot.pause()
        await assert_laid_out(pilot, app, size, PLAN_VIEW)
        assert app.focused is app.query_one("#grid")

    drive(app, scenario, size, hello=True, notifications=True)


@pytest.mark.parametrize("size", [(80, 24), (200, 60)], ids=["80x24", "200x60"])
def test_tab_stops_only_on_what_shows(tmp_path: Path, size: tuple[int, int]) -> None:
    """Tab goes grid, prompt, the number fields (and the history where it shows), then round again; never
    to a container, never to a widget off screen."""
    app = make_app(tmp_path)
    expected = ["grid", "prompt", "seed", "steps", "width", "height", "guidance"]
    if size[0] >= ExplorerApp.WIDE:
        expected.append("history")

    async def scenario(pilot: Pilot[Any]) -> None:
        assert app.focused is app.query_one("#grid")
        visited = []
        for _ in range(len(expected)):
            focused = app.focused
            assert focused is not None and on_screen(app, focused), f"tab stopped on {focused!r}, not on screen"
            visited.append(focused.id)
            await pilot.press("tab")
            await pilot.pause()
        assert visited == expected
        assert app.focused is app.query_one("#grid"), "tab comes round to the grid"
        await pilot.press("shift+tab")
        await pilot.pause()
        assert app.focused is not None and app.focused.id == expected[-1]

    drive(app, scenario, size, hello=True, notifications=True)


def test_the_footer_keeps_help_run_and_quit_at_every_width(tmp_path: Path) -> None:
    """From 80 to 200 columns, whatever has the focus: help, run and quit show whole, and each entry that
    shows is whole (the rest are left out, not cut)."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        for width in sorted({*range(80, 201, 10), 99, 119, 139, 159}):
            await pilot.resize_terminal(width, 30)
            await pilot.pause()
            await pilot.pause()
            for focus in ("#grid", "#prompt", "#history"):
                app.query_one(focus).focus()
                await pilot.pause()
                try:  # the footer follows the focus a frame or two later
                    await until(pilot, lambda: all(action in footer_keys(app) for action in ALWAYS), timeout=2)
                except AssertionError:
                    pytest.fail(f"{width} columns, {focus} focused: the footer shows {sorted(footer_keys(app))}")
                footer = app.query_one(Footer)
                for key in footer.query(FooterKey):
                    region = on_screen(app, key)
                    assert not region or region.width == key.region.width, f"{width}: {key.description} is cut"
            app.query_one("#grid").focus()

    drive(app, scenario, (80, 30), hello=True, notifications=True)


@pytest.mark.parametrize("size", [(79, 24), (80, 23), (40, 10)], ids=["79x24", "80x23", "40x10"])
def test_too_small_says_so_and_recovers(tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        note = app.query_one("#too-small", Static)
        assert on_screen(app, note) and str(note.render()) == "terminal too small: need 80x24"
        for selector in ("#header", "#views", "#main", "#footer"):
            assert not on_screen(app, app.query_one(selector)), f"{selector} shows while too small"
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        await pilot.pause()
        assert not on_screen(app, note)
        await assert_laid_out(pilot, app, (80, 24), PLAN_VIEW)

    drive(app, scenario, size, hello=True, notifications=True)


def test_narrowing_shows_the_view_that_has_the_focus(tmp_path: Path) -> None:
    """History focused in a wide terminal, then narrowed: the images view shows. And e (edit the prompt)
    from the images view brings the plan view."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.query_one("#history").focus()
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        await pilot.pause()
        assert app.focused is app.query_one("#history")
        await assert_laid_out(pilot, app, (100, 30), IMAGES_VIEW)
        await pilot.press("e")
        await pilot.pause()
        assert app.focused is app.query_one("#prompt")
        await assert_laid_out(pilot, app, (100, 30), PLAN_VIEW)

    drive(app, scenario, (200, 60), hello=True, notifications=True)


@pytest.mark.parametrize("size", [(80, 24), (200, 60)], ids=["80x24", "200x60"])
def test_messages_take_the_top_line_and_at_most_two_show(tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.clear_notifications()
        app.notify("saved saved_plans/a-rather-long-plan-name-for-this-message.plan.toml", title="plan saved")
        await until(pilot, lambda: bool(app.screen.query(Toast)))
        await pilot.pause()
        (toast,) = app.screen.query(Toast)
        region = on_screen(app, toast)
        assert region.y == 0 and region.height == 1, f"a message is one line at the top, not {region}"
        views = on_screen(app, app.query_one("#views"))
        if views:  # narrow: the view names stay readable
            assert region.x >= 20
        for selector in PLAN_VIEW + ("#footer",):
            assert not region.overlaps(on_screen(app, app.query_one(selector))), f"the message covers {selector}"
        for i in range(5):
            app.notify(f"message {i}")
        await pilot.pause(0.2)
        assert len(app.screen.query(Toast)) == 2
        assert [str(t.render()) for t in app.screen.query(Toast)] == ["message 3", "message 4"]

    drive(app, scenario, size, hello=True, notifications=True)


def test_information_goes_in_seconds_errors_stay(tmp_path: Path) -> None:
    """Information is capped to a few seconds; an error keeps its time, its lines (wrapped, the log path
    included), and its place: a new error drops the information shown, new information does not drop it."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.clear_notifications()
        app.notify("opened x", timeout=20)
        app.notify("the engine exited\nlog: /x/engine.log", title="engine crashed", severity="error", timeout=20)
        await pilot.pause(0.2)
        (error,) = app.screen.query(Toast)
        assert error._notification.timeout == 20 and "log: /x/engine.log" in str(error.render())
        assert on_screen(app, error).height == 2
        app.notify("opened y", timeout=20)
        app.notify("opened z", timeout=20)
        await pilot.pause(0.2)
        error, info = app.screen.query(Toast)
        assert error._notification.severity == "error" and str(info.render()) == "opened z"
        assert info._notification.timeout == ExplorerApp.MESSAGE_SECONDS["information"]

    drive(app, scenario, (80, 24), hello=True, notifications=True)


def test_resizing_under_the_help_screen(tmp_path: Path) -> None:
    """The size classes are the app's, so the explorer under a pushed screen follows a resize too."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        app.clear_notifications()
        await pilot.press("f1")
        await until(pilot, lambda: app.screen is not app.screen_stack[0])
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0])
        await pilot.pause()
        await assert_laid_out(pilot, app, (80, 24), PLAN_VIEW)
        assert not [n for n in app._notifications if n.severity == "error"]

    drive(app, scenario, (200, 60), hello=True, notifications=True)


def test_the_run_entry_is_dimmed_where_enter_does_something_else(tmp_path: Path) -> None:
    """enter runs from the grid and from the form's fields (they submit: a run); on the history it shows
    the highlighted run again, so there the footer's run entry is dimmed, not dropped."""
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        for focus, dimmed in (("#grid", False), ("#prompt", False), ("#seed", False), ("#history", True)):
            app.query_one(focus).focus()
            await until(pilot, lambda dimmed=dimmed: any(k.description == "run" and k.has_class("-disabled") == dimmed
                                                         for k in app.query_one(Footer).query(FooterKey)), timeout=5)

    drive(app, scenario, (200, 60), hello=True, notifications=True)


def test_the_view_bar_takes_clicks(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def scenario(pilot: Pilot[Any]) -> None:
        await pilot.click("#views", offset=(10, 0))  # " plan   images ": on "images"
        await pilot.pause()
        await assert_laid_out(pilot, app, (80, 24), IMAGES_VIEW)
        await pilot.click("#views", offset=(3, 0))
        await pilot.pause()
        await assert_laid_out(pilot, app, (80, 24), PLAN_VIEW)
        assert app.focused is app.query_one("#grid")

    drive(app, scenario, (80, 24), hello=True, notifications=True)
