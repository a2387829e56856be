"""Every keyboard action of the explorer in one table: binding id, default keys, what it does; and the
plan edits as one registry row each (id, keys, the function, the palette's verb, whether it asks for a
loop count), so nothing has to agree by name.

The app and the layer grid build their bindings from these tables, the help screen and the README list
them, and the config file's [keys] table may rebind any id (validated against them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from textual.binding import Binding

from dit_explore.engine.core.plan import Plan
from dit_explore.tui import editing


@dataclass(frozen=True)
class Key:
    id: str
    keys: str  # Textual key names, comma separated
    action: str
    description: str  # short, for the footer
    help: str  # one line, for the help screen and the palette
    show: bool = True


GRID_KEYS = (
    Key("grid.left", "left,h", "move(-1, 0)", "left", "move the cursor left", show=False),
    Key("grid.right", "right,l", "move(1, 0)", "right", "move the cursor right", show=False),
    Key("grid.up", "up,k", "move(0, -1)", "up", "move the cursor up a row", show=False),
    Key("grid.down", "down,j", "move(0, 1)", "down", "move the cursor down a row", show=False),
    Key("grid.extend-left", "shift+left,H", "move(-1, 0, True)", "select", "extend the selection left", show=False),
    Key("grid.extend-right", "shift+right,L", "move(1, 0, True)", "select", "extend the selection right", show=False),
    Key("grid.extend-up", "shift+up,K", "move(0, -1, True)", "select", "extend the selection up a row", show=False),
    Key("grid.extend-down", "shift+down,J", "move(0, 1, True)", "select", "extend the selection down a row", show=False),
    Key("grid.visual", "v", "visual", "select", "start (or stop) selecting: moves then extend the selection"),
    Key("grid.group", "g", "select_group", "group", "select the similarity group under the cursor"),
    Key("grid.shares", "percent_sign", "toggle_shares", "time %",
        "show each block's share of a full-model step in its cell (timed after each run)", show=False),
)



@dataclass(frozen=True)
class Edit:
    """A plan edit on the selected blocks of one stack: its key binding and what it does. With
    `asks_loops`, the app asks for a loop count first and `apply` receives it as `loops=`."""

    id: str
    keys: str
    verb: str  # the palette's "plan: {verb} selection"
    description: str  # short, for the footer
    help: str
    apply: Callable[..., Plan]
    asks_loops: bool = False

    @property
    def key(self) -> Key:
        return Key(self.id, self.keys, f"edit('{self.id}')", self.description, self.help)


EDITS = (
    Edit("skip", "s", "Skip", "skip", "skip the selected blocks", editing.skip),
    Edit("middle-repeat", "m", "Middle-repeat", "repeat", "run the selection's center block once per selected block",
         editing.middle_repeat),
    Edit("reverse", "r", "Reverse", "reverse", "run the selected blocks in reverse order", editing.reverse),
    Edit("parallel", "p", "Parallel", "parallel", "run the selected blocks in parallel (outputs averaged)",
         editing.parallel),
    # "l" moves right (vim keys), so looped parallel takes "x", as in the plan grammar's "[10-28]x3".
    Edit("looped-parallel", "x", "Looped parallel", "loop", "looped parallel: the parallel group runs N times (asks N)",
         editing.parallel, asks_loops=True),
    Edit("restore", "d", "Restore", "restore", "restore the selected blocks to normal", editing.restore),
    # Cached spans ("4-11@reuse", "4-11@forecast"): "c" clears the plan, so reuse takes "C" (cache); "f" forecasts.
    Edit("reuse", "C", "Reuse (cache)", "reuse",
         "cache the selection: computed on the first step, its residual reused on the others (4-11@reuse)",
         partial(editing.cache, mode="reuse")),
    Edit("forecast", "f", "Forecast (cache)", "forecast",
         "cache the selection: computed on the first step, its residual extrapolated from the last two "
         "computed steps on the others (4-11@forecast)", partial(editing.cache, mode="forecast")),
)
EDITS_BY_ID = {edit.id: edit for edit in EDITS}
EDIT_KEYS = tuple(edit.key for edit in EDITS)

APP_KEYS = (
    Key("run", "enter", "run", "run", "run the plan (and its baseline) on the engine"),
    Key("cancel", "escape", "cancel", "cancel", "cancel the running job, or clear the selection"),
    Key("clear", "c", "clear_plan", "clear", "clear the plan: every block runs normally"),
    Key("undo", "u", "undo", "undo", "undo the last plan change"),
    Key("redo", "ctrl+r", "redo", "redo", "redo"),
    Key("edit-prompt", "e", "edit_prompt", "prompt", "edit the prompt (enter runs, escape returns to the grid)"),
    Key("analyze", "a", "analyze", "analyze", "analyze block similarity for the current prompt (groups recolor the grid)"),
    Key("heatmap", "t", "heatmap", "heatmap", "show or hide the similarity matrices with their groups"),
    # "T" for time: rows are the denoising steps ("t" is the heatmap).
    Key("steps", "T", "steps", "steps",
        "the plan over time: a step x block map; the edit keys act on a range of steps there (T closes)", show=False),
    Key("save", "ctrl+s", "save", "save", "save the plan to the plans folder"),
    Key("open", "ctrl+o", "open", "open", "open a plan file, a PNG written by dit-explore, or a sweep's folder"),
    # The importance sweep and what it shows; "i" for importance ("s" skips), capitals for the views of it.
    Key("sweep", "i", "sweep", "importance",
        "importance sweep: leave each block out in turn (skip-each) on the prompt and settings; the grid "
        "then shades each block by what leaving it out costs (escape cancels)", show=False),
    Key("importance", "I", "toggle_importance", "overlay",
        "show or hide the importance overlay (the group colors again)", show=False),
    Key("sweep-images", "P", "sweep_images", "plot",
        "images: the sweep's plot, then its contact sheet, then the run's images again", show=False),
    # Per-step previews of the run shown: brackets step back and forth through the denoising steps.
    Key("step-back", "left_square_bracket", "step_previews(-1)", "step -",
        "images: the run's plan and baseline previews one denoising step earlier, side by side", show=False),
    Key("step-forward", "right_square_bracket", "step_previews(1)", "step +",
        "images: one denoising step later (past the last step: the final images again)", show=False),
    # "R" for runs ("h" moves left, vim-style); the history keeps past sessions' runs too.
    Key("history", "R", "history", "history",
        "go to the run history (enter loads a run's plan, prompt and images; escape or R goes back)"),
    Key("help", "f1,question_mark", "help", "help", "show the keys and what the grid shows"),
    Key("quit", "ctrl+q", "quit", "quit", "quit (the engine process exits too)"),
    # Below 140 columns one view shows at a time; the footer offers the other one (tui/app.py).
    Key("view-images", "f2", "show_view('images')", "images",
        "narrow terminal: show the images, the engine status and the history"),
    Key("view-plan", "f2", "show_view('plan')", "plan", "narrow terminal: show the grid, the plan line and the form"),
)

# The history's A/B marks (bound by the app: they act on the run highlighted in the history list).
COMPARE_KEYS = (
    Key("compare.mark-a", "A", "mark_run('A')", "mark A",
        "mark the run highlighted in the history as A (the images show A vs B once a B is marked)", show=False),
    Key("compare.mark-b", "B", "mark_run('B')", "mark B",
        "mark the run highlighted in the history as B (the images show A vs B once an A is marked)", show=False),
)

ALL_KEYS = GRID_KEYS + EDIT_KEYS + APP_KEYS + COMPARE_KEYS
IDS = {k.id for k in ALL_KEYS}

# The footer (tui/widgets/chrome.py) shows the keys in this order (ids), as many as the width allows, and
# run, help and quit at every width (they fit at 80 columns); keys not named here follow.
FOOTER_ORDER = ("run", "help", "quit", "view-images", "view-plan", "skip", "edit-prompt", "undo", "cancel",
                "history", "parallel", "looped-parallel", "reverse", "middle-repeat", "restore", "grid.visual",
                "grid.group", "redo", "clear", "analyze", "heatmap", "save", "open", "reuse", "forecast")
FOOTER_ALWAYS = ("run", "help", "quit")


def bindings(keys: tuple[Key, ...]) -> list[Binding | tuple[str, str] | tuple[str, str, str]]:
    return [Binding(k.keys, k.action, k.description, show=k.show, tooltip=k.help, id=k.id) for k in keys]
