"""Themes from `themes/*.toml` (and the user's `~/.config/dit-explore/themes/`), as Textual themes.

A theme file holds Textual's base colors under [colors] and dit-explore's own CSS variables under
[variables] (the similarity-group and stack colors the layer grid uses). Problems are reported as one
line naming the file and key.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from textual.theme import Theme

THEMES_DIR = Path(__file__).resolve().parents[1] / "themes"
DEFAULT_THEME = "dit-dark"
REQUIRED_VARIABLES = (
    "group-first", "group-middle-1", "group-middle-2", "group-middle-3", "group-middle-4", "group-last",
    "stack-double", "stack-single", "cell-text", "cell-skipped", "cell-selected",
)
_COLOR_KEYS = {f.name for f in fields(Theme)} - {"name", "dark", "variables", "luminosity_spread", "text_alpha", "ansi"}


class ThemeError(ValueError):
    pass


def load_theme(path: Path) -> Theme:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ThemeError(f"{path}: cannot read theme: {exc}") from None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ThemeError(f"{path}: name: a theme needs a name")
    colors = data.get("colors", {})
    variables = data.get("variables", {})
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
    """Shipped themes, then the user's (which may replace a shipped one by name)."""
    themes: dict[str, Theme] = {}
    for folder in (THEMES_DIR, user_dir):
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                theme = load_theme(path)
                themes[theme.name] = theme
    return themes
