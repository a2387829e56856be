"""The explorer's frame around the work: the view bar of narrow terminals and the footer of keys.

Below 140 columns the explorer shows one view at a time, the plan (grid, plan line, form) or the images
(images, status, history); `ViewBar` says which, and takes clicks. `KeyFooter` shows the key bindings in
a fixed priority order (tui/keys.py `FOOTER_ORDER`) and leaves out, whole, the ones that do not fit the
width, so run, help and quit show at every width.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widgets import Footer, Static
from textual.widgets._footer import FooterKey


class ViewBar(Static):
    """One line: the views (the shown one highlighted, each a click target), the engine's state in a word
    or two (the status itself is in the images view), then the app's title."""

    DEFAULT_CSS = """
    ViewBar {
        height: 1;
        background: $panel;
        color: $foreground;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, views: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        """`views`: (name, label) in order; the first shows first."""
        super().__init__(id=id)
        self._views = tuple(views)
        self.shown = self._views[0][0]
        self._state: tuple[str, str] = ("", "")

    def on_mount(self) -> None:
        self.watch(self.app, "title", self._draw, init=False)
        self.watch(self.app, "sub_title", self._draw)

    def show(self, name: str) -> None:
        self.shown = name
        self._draw()

    def show_state(self, words: str, style: str = "") -> None:
        """The engine's state, shortened to its first phrase ("ready", "busy", "loading 40%")."""
        self._state = (words.split(" — ")[0].split(" on ")[0][:28], style)
        self._draw()

    def _draw(self) -> None:
        parts: list[Content | tuple[str, str] | str] = []
        for name, label in self._views:
            style = "bold reverse" if name == self.shown else "dim"
            parts.append(Content(f" {label} ").stylize(f"{style} @click=app.show_view('{name}')"))
            parts.append(" ")
        words, style = self._state
        if words:
            parts += [(" engine ", "dim"), (words, style or ""), " "]
        title = " — ".join(t for t in (self.app.title, self.app.sub_title) if t)
        parts.append((f"  {title}", "dim"))
        self.update(Content.assemble(*parts))


def _width(key: FooterKey) -> int:
    """Cells a footer key takes in the footer's default (non-compact) style: " key description "."""
    return cell_len(key.key_display) + (cell_len(key.description) + 1 if key.description else 0) + 2


class KeyFooter(Footer):
    """The footer: the shown bindings in priority order (`order`: binding ids, most wanted first; the
    others after, as they come), each whole, as many as fit the width.

    `always`: ids shown whatever has the focus. Where the focused widget takes the key for a hidden binding
    of its own, the app's binding shows anyway: as is for a text field's submit (the form turns enter in a
    field into a run), dimmed for anything else (enter on the history shows a run, it does not run one).
    """

    def __init__(self, order: Sequence[str], always: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._rank = {binding_id: rank for rank, binding_id in enumerate(order)}
        self._always = tuple(always)
        self._fitted_width = -1

    def _entries(self) -> list[tuple[Binding, bool, str]]:
        """(binding, enabled, tooltip) to show, one per binding id (or action, for bindings without one)."""
        active = self.screen.active_bindings
        entries: dict[str, tuple[Binding, bool, str]] = {}
        for _node, binding, enabled, tooltip in active.values():
            if binding.show:
                entries.setdefault(binding.id or binding.action, (binding, enabled, tooltip))
        if self._always:
            app_bindings = self.app._bindings.copy()  # the app's own, with the user's keymap, as Textual does
            if self.app._keymap:
                app_bindings.apply_keymap(self.app._keymap)
            for _key, binding in app_bindings:
                if binding.id in self._always and binding.id not in entries and binding.show:
                    taken = active.get(binding.key)
                    usable = taken is None or taken.binding.id == binding.id or taken.binding.action == "submit"
                    entries[binding.id] = (binding, usable, binding.tooltip)
        return sorted(entries.values(), key=lambda e: self._rank.get(e[0].id or "", len(self._rank)))

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        self._fitted_width = width = self.size.width
        palette: FooterKey | None = None
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            found = self.screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING)
            if found is not None:
                _node, binding, enabled, tooltip = found
                palette = FooterKey(binding.key, self.app.get_key_display(binding), binding.description,
                                    binding.action, classes="-command-palette", disabled=not enabled,
                                    tooltip=binding.tooltip or binding.description)
                width -= _width(palette) + 2  # docked right, with a rule and a space
        for binding, enabled, tooltip in self._entries():
            key = FooterKey(binding.key, self.app.get_key_display(binding), binding.description, binding.action,
                            disabled=not enabled, tooltip=tooltip).data_bind(compact=Footer.compact)
            if self.size.width > 0:  # laid out: leave out, whole, what does not fit
                if _width(key) > width:
                    continue
                width -= _width(key)
            yield key
        if palette is not None:
            yield palette

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._fitted_width:
            self.call_after_refresh(self.recompose)
