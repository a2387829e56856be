"""The user's config file, `~/.config/dit-explore/config.toml` (or $DIT_EXPLORE_CONFIG), strictly checked.

```toml
[keys]                 # rebind any action by its id (the help screen, f1, lists them)
skip = "s"
looped-parallel = "x,ctrl+l"

[ui]
theme = "dit-light"    # default theme (the --theme flag wins)
graphics = "halfcell"  # default image protocol (the --graphics flag wins)
```
Every problem is one line naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from textual.keys import KEY_ALIASES, _character_to_key

from dit_explore.tui.keys import ALL_KEYS, IDS

GRAPHICS = ("auto", "tgp", "sixel", "halfcell", "unicode")
_KEY = re.compile(r"^([a-z0-9_]+\+)*([a-z0-9_]+|[^\sa-z0-9_,])$", re.IGNORECASE)


# Textual's own keys, live wherever the grid has focus: a rebinding must not take them either.
TEXTUAL_KEYS = {"ctrl+p": "the command palette", "tab": "the next field", "shift+tab": "the previous field"}


class ConfigError(ValueError):
    pass


def canonical_key(key: str) -> str:
    """One spelling per key, as Textual matches them: "?" is question_mark, "ctrl+i" is tab."""
    if len(key) == 1:
        key = _character_to_key(key)
    return next((name for name, aliases in KEY_ALIASES.items() if key in aliases), key)


def _keys(keys: str) -> dict[str, str]:
    """Each key of a comma-separated list by its canonical name, with the spelling it was given."""
    return {canonical_key(k.strip()): k.strip() for k in keys.split(",") if k.strip()}


def check_conflicts(keymap: dict[str, str], where: str) -> None:
    """No two actions on one key. The grid's keys, the plan edits and the app's keys all act while the
    grid has focus, so they are one scope: each rebound action's keys must differ from every other
    action's keys (its rebinding, else its default) and from Textual's own. Actions that share a key by
    default (f2 shows whichever view is hidden) may keep sharing it."""
    defaults = {k.id: _keys(k.keys) for k in ALL_KEYS}
    current = {i: _keys(keymap[i]) if i in keymap else defaults[i] for i in defaults}
    for action in keymap:
        for key, spelled in current[action].items():
            if key in TEXTUAL_KEYS:
                raise ConfigError(f"{where}: keys.{action}: {spelled!r} is Textual's key for {TEXTUAL_KEYS[key]}")
        for other in defaults:
            if other == action or defaults[action].keys() & defaults[other].keys():
                continue
            common = [key for key in current[action] if key in current[other]]
            if common:
                whose = f"keys.{other} in this file" if other in keymap else "by default"
                raise ConfigError(f"{where}: keys.{action}: {current[action][common[0]]!r} is also the key of "
                                  f"{other} ({whose}); choose another key for one of them")


@dataclass(frozen=True)
class Config:
    keymap: dict[str, str] = field(default_factory=dict)
    theme: str | None = None
    graphics: str | None = None


def config_dir() -> Path:
    """~/.config/dit-explore (or $XDG_CONFIG_HOME/dit-explore): the config file and user themes."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "dit-explore"


def config_path() -> Path:
    override = os.environ.get("DIT_EXPLORE_CONFIG")
    if override:
        return Path(override)
    return config_dir() / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config at `path` (default: config_path()); a missing file is an empty config."""
    path = path or config_path()
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    for section in data:
        if section not in ("keys", "ui"):
            raise ConfigError(f"{path}: {section}: unknown section (known: keys, ui)")
    keymap: dict[str, str] = {}
    for action, keys in data.get("keys", {}).items():
        where = f"{path}: keys.{action}"
        if action not in IDS:
            raise ConfigError(f"{where}: unknown action (known: {', '.join(sorted(IDS))})")
        if not isinstance(keys, str) or not keys.strip():
            raise ConfigError(f"{where}: expected keys like \"s\" or \"ctrl+s,f2\", got {keys!r}")
        tokens = [t.strip() for t in keys.split(",")]
        for token in tokens:
            if not _KEY.match(token):
                raise ConfigError(f"{where}: not a key name at {token!r}")
        keymap[action] = ",".join(tokens)
    check_conflicts(keymap, str(path))
    ui = data.get("ui", {})
    for key in ui:
        if key not in ("theme", "graphics"):
            raise ConfigError(f"{path}: ui.{key}: unknown key (known: theme, graphics)")
    theme = ui.get("theme")
    if theme is not None and not isinstance(theme, str):
        raise ConfigError(f"{path}: ui.theme: expected a theme name, got {theme!r}")
    graphics = ui.get("graphics")
    if graphics is not None and graphics not in GRAPHICS:
        raise ConfigError(f"{path}: ui.graphics: expected one of {', '.join(GRAPHICS)}, got {graphics!r}")
    return Config(keymap=keymap, theme=theme, graphics=graphics)
