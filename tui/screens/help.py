"""The help screen: every key (with the user's rebindings), what the grid shows, the plan grammar."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from dit_explore.tui.keys import APP_KEYS, EDIT_KEYS, GRID_KEYS, Key
from dit_explore.tui.widgets.layer_grid import LEGEND

GRAMMAR = """\
Each stack's order:  0-9, [10-28]x3, 29-37
  3-7     blocks 3 to 7          28-10   blocks 28 down to 10 (reversed)
  15*19   block 15, 19 times     [10-28] parallel: same input, outputs averaged
  [a-b]xK parallel, looped K times (the average is fed back in)
  a-b@reuse     cached span: run on the first step (and where an order runs it plainly);
                elsewhere its residual from the last computed step is added instead (↻)
  a-b@forecast  as reuse, the residual extrapolated from the last two computed steps (↗)
Cells:  letter = similarity group (F first, 1-4 middle, L last; D/S = stack until analyzed)
Importance (i runs the sweep, I toggles): each cell shaded by what leaving that block out costs
  (PSNR against the full model: black = nothing, pale yellow = the sweep's costliest block; a bar the
  same), ✗ = its item failed; the cursor's block's value in the grid's first line"""


def key_table(keymap: dict[str, str]) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold", width=22, no_wrap=True)
    table.add_column()
    sections: tuple[tuple[str, str, tuple[Key, ...]], ...] = (
        ("layer grid", "", GRID_KEYS),
        ("plan edits", "on the selection, or on the cursor's block", EDIT_KEYS),
        ("everywhere", "", APP_KEYS),
    )
    for title, note, keys in sections:
        table.add_row(Text(title, style="underline"), Text(note, style="dim"))
        for key in keys:
            shown = (keymap.get(key.id, key.keys).replace(",", " / ").replace("question_mark", "?")
                     .replace("percent_sign", "%").replace("left_square_bracket", "[")
                     .replace("right_square_bracket", "]"))
            table.add_row(shown, key.help)
        table.add_row("", "")
    table.add_row("ctrl+p", "command palette: every action, by name")
    return table


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 96;
        max-width: 95%;
        height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    """
    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "close")]

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self._keymap = keymap

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("dit-explore keys", style="bold"))
            yield Static(key_table(self._keymap))
            yield Static(Text("\n" + GRAMMAR + "\n        " + LEGEND))

