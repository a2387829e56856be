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

from dit_explore.engine.core.text import escape_controls, shown
from dit_explore.engine.core.userfiles import UserFileError, read_user_text
from dit_explore.tui.keys import ALL_KEYS, IDS

GRAPHICS = ("auto", "tgp", "sixel", "halfcell", "unicode")
MAX_CONFIG_BYTES = 1 << 20  # far more than every action rebound; refused on size alone beyond this
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


def _got(value: object) -> str:
    """A config value as an error line echoes it: quoted, control characters escaped, cut."""
    return repr(value) if isinstance(value, str) and len(value) <= 200 and value.isprintable() else shown(value)


def _table(data: dict[str, object], section: str, where: str, example: str) -> dict[str, object]:
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {section}: expected a table like {example}, got {_got(value)}")
    return value


def load_config(path: Path | None = None) -> Config:
    """The config at `path` (default: config_path()); a missing file is an empty config. Read like every
    file the user names: a regular file (never a FIFO or a device) of at most MAX_CONFIG_BYTES."""
    path = path or config_path()
    if not path.exists():
        return Config()
    where = escape_controls(str(path))
    try:
        data = tomllib.loads(read_user_text(path, limit=MAX_CONFIG_BYTES, kind="config files"))
    except UserFileError as exc:
        raise ConfigError(str(exc)) from None
    except RecursionError:
        raise ConfigError(f"{where}: cannot read: arrays or tables nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer over Python's 4300-digit limit
        reason = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else "a number too long to read"
        raise ConfigError(f"{where}: cannot read: {shown(reason)}") from None
    for section in data:
        if section not in ("keys", "ui"):
            raise ConfigError(f"{where}: {shown(section)}: unknown section (known: keys, ui)")
    keymap: dict[str, str] = {}
    for action, keys in _table(data, "keys", where, '[keys] skip = "s"').items():
        at = f"{where}: keys.{shown(action)}"
        if action not in IDS:
            raise ConfigError(f"{at}: unknown action (known: {', '.join(sorted(IDS))})")
        if not isinstance(keys, str) or not keys.strip():
            raise ConfigError(f"{at}: expected keys like \"s\" or \"ctrl+s,f2\", got {_got(keys)}")
        tokens = [t.strip() for t in keys.split(",")]
        for token in tokens:
            if not _KEY.match(token):
                raise ConfigError(f"{at}: not a key name at {_got(token)}")
        keymap[action] = ",".join(tokens)
    check_conflicts(keymap, where)
    ui = _table(data, "ui", where, '[ui] theme = "dit-light"')
    for key in ui:
        if key not in ("theme", "graphics"):
            raise ConfigError(f"{where}: ui.{shown(key)}: unknown key (known: theme, graphics)")
    theme = ui.get("theme")
    if theme is not None and not isinstance(theme, str):
        raise ConfigError(f"{where}: ui.theme: expected a theme name, got {_got(theme)}")
    graphics = ui.get("graphics")
    if graphics is not None and graphics not in GRAPHICS:
        raise ConfigError(f"{where}: ui.graphics: expected one of {', '.join(GRAPHICS)}, got {_got(graphics)}")
    assert theme is None or isinstance(theme, str)
    return Config(keymap=keymap, theme=theme, graphics=graphics if isinstance(graphics, str) else None)
