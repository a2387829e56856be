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
    # (keys no other action has: "k" moves up and "L" extends right, so those would conflict)
    config = load_config(write(tmp_path, '[keys]\nskip = "y, ctrl+k"\nlooped-parallel = "X"\n'
                                          '[ui]\ntheme = "dit-light"\ngraphics = "halfcell"\n'))
    assert config.keymap == {"skip": "y,ctrl+k", "looped-parallel": "X"}
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
        # one key, two actions: grid, edit and app keys all act while the grid has focus
        ('[keys]\nskip = "j"\n', "keys.skip: 'j' is also the key of grid.down (by default)"),
        ('[keys]\nskip = "ctrl+q"\n', "keys.skip: 'ctrl+q' is also the key of quit (by default)"),
        ('[keys]\nskip = "y"\nreverse = "y"\n', "keys.skip: 'y' is also the key of reverse (keys.reverse in this file)"),
        ('[keys]\nrun = "?"\n', "keys.run: '?' is also the key of help (by default)"),
        ('[keys]\nhelp = "f2"\n', "keys.help: 'f2' is also the key of view-images (by default)"),
        ('[keys]\nskip = "ctrl+p"\n', "keys.skip: 'ctrl+p' is Textual's key for the command palette"),
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


def test_every_default_key_taken_by_another_action_is_refused(tmp_path: Path) -> None:
    """Rebinding any action to any other action's default key names both (unless the two share a key by
    default, as the two f2 views do)."""
    defaults = {k.id: {t.strip() for t in k.keys.split(",")} for k in ALL_KEYS}
    checked = 0
    for action in ALL_KEYS:
        for other in ALL_KEYS:
            if other.id == action.id or defaults[action.id] & defaults[other.id]:
                continue
            key = sorted(defaults[other.id])[0]
            with pytest.raises(ConfigError) as info:
                load_config(write(tmp_path, f'[keys]\n"{action.id}" = "{key}"\n'))
            owners = [o.id for o in ALL_KEYS if key in defaults[o.id] and o.id != action.id]  # f2 has two
            assert any(f"keys.{action.id}: {key!r} is also the key of {o} (by default)" in str(info.value)
                       for o in owners), str(info.value)
            checked += 1
    assert checked > len(ALL_KEYS) ** 2 // 2


def test_freed_and_shared_keys_are_fine(tmp_path: Path) -> None:
    # j is free once grid.down moves off it; f2 stays shared by the two views (one shows at a time)
    text = '[keys]\n"grid.down" = "n"\nskip = "j"\nview-images = "f2,f3"\n'
    assert load_config(write(tmp_path, text)).keymap == {"grid.down": "n", "skip": "j", "view-images": "f2,f3"}
