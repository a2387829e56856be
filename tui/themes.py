"""Themes from the shipped `themes/*.toml` and the user's `~/.config/dit-explore/themes/*.toml`, as
Textual themes.

A theme file holds Textual's base colors under [colors] and dit-explore's own CSS variables under
[variables] (the similarity-group and stack colors the layer grid uses). Problems are reported as one
line naming the file and key.

These are the only themes: `--theme`, the config's `[ui] theme` and the command palette's "Theme"
command all offer `available_themes()`. Textual's built-in themes lack the grid's variables (every group
would look alike), so `use_themes` takes them off the app.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.theme import Theme

if TYPE_CHECKING:
    from textual.app import App

DEFAULT_THEME = "dit-dark"
# Stacks are colored by position (stack-1 is a model's first stack), never by name: a family may name
# its stacks anything.
STACK_COLORS = 3
REQUIRED_VARIABLES = (
    "group-first", "group-middle-1", "group-middle-2", "group-middle-3", "group-middle-4", "group-last",
    *(f"stack-{i}" for i in range(1, STACK_COLORS + 1)), "cell-text", "cell-skipped", "cell-selected",
)
_COLOR_KEYS = {f.name for f in fields(Theme)} - {"name", "dark", "variables", "luminosity_spread", "text_alpha", "ansi"}


MAX_THEME_BYTES = 1 << 20  # a user's theme file: refused on size alone beyond this


class ThemeError(ValueError):
    pass


def shipped_themes() -> Traversable:
    """The themes folder installed with dit-explore (package data, wherever the package lives)."""
    return files("dit_explore.themes")


def user_themes_dir() -> Path:
    """~/.config/dit-explore/themes (beside the config file; $XDG_CONFIG_HOME is honored)."""
    from dit_explore.tui.config import config_dir

    return config_dir() / "themes"


def load_theme(path: Path | Traversable) -> Theme:
    """A theme file; a user's is read like every file the user names (a regular file of at most
    MAX_THEME_BYTES, never a FIFO or a device), and every problem is one line."""
    from dit_explore.engine.core.text import shown
    from dit_explore.engine.core.userfiles import UserFileError, read_user_text

    try:
        text = read_user_text(path, limit=MAX_THEME_BYTES, kind="theme files") if isinstance(path, Path) \
            else path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except UserFileError as exc:
        raise ThemeError(str(exc)) from None
    except RecursionError:
        raise ThemeError(f"{path}: cannot read theme: arrays or tables nested too deeply") from None
    except (OSError, ValueError) as exc:  # TOMLDecodeError, or an integer over Python's 4300-digit limit
        raise ThemeError(f"{path}: cannot read theme: {shown(exc)}") from None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ThemeError(f"{path}: name: a theme needs a name")
    colors = data.get("colors", {})
    variables = data.get("variables", {})
    for key, table in (("colors", colors), ("variables", variables)):
        if not isinstance(table, dict):
            raise ThemeError(f"{path}: {key}: expected a table, got {shown(table)}")
    for key in colors:
        if key not in _COLOR_KEYS:
            raise ThemeError(f"{path}: colors.{key}: unknown color (known: {', '.join(sorted(_COLOR_KEYS))})")
    missing = [v for v in REQUIRED_VARIABLES if v not in variables]
    if missing:
        raise ThemeError(f"{path}: variables: missing {', '.join(missing)}")
    if "primary" not in colors:
        raise ThemeError(f"{path}: colors.primary: missing")
    return Theme(name=name, dark=bool(data.get("dark", True)), variables=dict(variables), **colors)


def available_themes(user_dir: Path | None = None) -> dict[str, Theme]:
    """Shipped themes, then the user's (default: user_themes_dir()), which may replace a shipped one
    by name."""
    themes: dict[str, Theme] = {}
    shipped = sorted((p for p in shipped_themes().iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)
    user = user_dir if user_dir is not None else user_themes_dir()
    for path in [*shipped, *(sorted(user.glob("*.toml")) if user.is_dir() else [])]:
        theme = load_theme(path)
        themes[theme.name] = theme
    return themes


def check_theme(name: str, themes: dict[str, Theme], where: str) -> None:
    """`name` must be one of `themes`; `where` names the setting ("--theme", "config.toml: ui.theme")."""
    if name not in themes:
        raise ThemeError(f"{where} {name}: no such theme (available: {', '.join(sorted(themes))})")


def use_themes(app: App[Any], name: str, themes: dict[str, Theme] | None = None) -> None:
    """Give `app` dit-explore's themes (default: available_themes()) and only those, and switch it to
    `name`: the palette's "Theme" command then lists exactly what --theme accepts."""
    themes = available_themes() if themes is None else themes
    for theme in themes.values():
        app.register_theme(theme)
    app.theme = name
    for other in list(app.available_themes):
        if other not in themes:
            app.unregister_theme(other)
