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

from dit_explore.tui.keys import IDS

GRAPHICS = ("auto", "tgp", "sixel", "halfcell", "unicode")
_KEY = re.compile(r"^([a-z0-9_]+\+)*([a-z0-9_]+|[^\sa-z0-9_,])$", re.IGNORECASE)


class ConfigError(ValueError):
    pass


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
