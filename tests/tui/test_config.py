"""The config file and the theme files: strict, one line per problem naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dit_explore.tui.config import Config, ConfigError, load_config
from dit_explore.tui.keys import ALL_KEYS, IDS
from dit_explore.tui.themes import REQUIRED_VARIABLES, ThemeError, available_themes, load_theme


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_missing_config_is_empty(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope.toml") == Config()


def test_keys_and_ui_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[keys]\nskip = "k, ctrl+k"\nlooped-parallel = "L"\n'
                                          '[ui]\ntheme = "dit-light"\ngraphics = "halfcell"\n'))
    assert config.keymap == {"skip": "k,ctrl+k", "looped-parallel": "L"}
    assert (config.theme, config.graphics) == ("dit-light", "halfcell")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[keys]\nexplode = "x"\n', "keys.explode: unknown action"),
        ("[keys]\nskip = 3\n", "keys.skip: expected keys"),
        ('[keys]\nskip = "ctrl+ s"\n', "keys.skip: not a key name at 'ctrl+ s'"),
        ('[colors]\nx = "y"\n', "colors: unknown section"),
        ('[ui]\nfont = "mono"\n', "ui.font: unknown key"),
        ('[ui]\ngraphics = "ascii"\n', "ui.graphics: expected one of auto, tgp, sixel, halfcell, unicode"),
        ("[ui\n", "cannot read"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_every_action_has_a_unique_id_and_key() -> None:
    assert len(IDS) == len(ALL_KEYS)
    assert {"skip", "middle-repeat", "reverse", "parallel", "looped-parallel", "restore", "clear", "undo", "redo",
            "run", "cancel", "edit-prompt", "save", "open", "help", "quit"} <= IDS


def test_shipped_themes_define_every_group_color() -> None:
    themes = available_themes()
    assert {"dit-dark", "dit-light"} <= set(themes)
    for theme in themes.values():
        assert set(REQUIRED_VARIABLES) <= set(theme.variables)
    assert themes["dit-light"].dark is False and themes["dit-dark"].dark is True


def test_a_user_theme_missing_group_colors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[colors]\nprimary = "#ffffff"\n[variables]\ngroup-first = "#000000"\n')
    with pytest.raises(ThemeError, match="variables: missing group-middle-1"):
        load_theme(path)
