"""The config file against hostile or broken input (hardening item 16): a section of the wrong type,
nesting, long numbers, control characters, a FIFO, /dev/zero or a huge file is one line naming the file
and the key, never a traceback and never a bogus error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dit_explore.tui.cli import main
from dit_explore.tui.config import MAX_CONFIG_BYTES, ConfigError, load_config
from tests.guarded import cli, in_thread


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.isprintable() and len(message) < 800, message
    return message


@pytest.mark.parametrize(("text", "rest"), [
    ("keys = 5\n", 'keys: expected a table like [keys] skip = "s", got 5'),
    ('keys = "s"\n', "keys: expected a table like [keys] skip = \"s\", got 's'"),
    ('ui = ["theme"]\n', "ui: expected a table like [ui] theme = \"dit-light\", got ['theme']"),
    ('ui = "theme"\n', "ui: expected a table like [ui] theme = \"dit-light\", got 'theme'"),
    ("[ui]\ntheme = [[[1]]]\n", "ui.theme: expected a theme name, got [[[1]]]"),
    ("[keys]\nskip = " + "[" * 5000 + "]" * 5000 + "\n", "cannot read: arrays or tables nested too deeply"),
    ("[ui]\ntheme = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n", "cannot read: arrays or tables nested too deeply"),
    ("[ui]\ntheme = " + "9" * 5000 + "\n", "cannot read: a number too long to read"),
    ('[keys]\n"\\u001b[2J" = "s"\n', "keys.\\x1b[2J: unknown action (known: analyze, cancel, clear, …)"),
    ('[keys]\nskip = "\\u0007,ctrl+ s"\n', "keys.skip: not a key name at 'ctrl+ s'"),
    ('[ui]\ngraphics = "\\u001b]0;x\\u0007"\n', "ui.graphics: expected one of auto, tgp, sixel, halfcell, unicode, "
                                               "got \\x1b]0;x\\x07"),
    ('[ui]\ngraphics = "' + "g" * 5000 + '"\n', f"ui.graphics: expected one of auto, tgp, sixel, halfcell, unicode, "
                                              f"got {'g' * 200}… (5000 characters)"),
    ('["\\u001b[31m"]\n', "\\x1b[31m: unknown section (known: keys, ui)"),
], ids=lambda v: v[:30] if isinstance(v, str) else None)
def test_bad_values_are_one_line_naming_the_key(tmp_path: Path, text: str, rest: str) -> None:
    path = write(tmp_path, text)
    message = refused(path)
    head, _, _ = rest.partition("…)")  # a list of every action ends some lines
    assert message == f"{path}: {rest}" if "…)" not in rest else message.startswith(f"{path}: {head}")


def test_config_files_are_bounded_and_typed(tmp_path: Path) -> None:
    big = write(tmp_path, "#" * (MAX_CONFIG_BYTES + 1))
    assert refused(big) == f"{big}: {MAX_CONFIG_BYTES + 1} bytes; config files are at most {MAX_CONFIG_BYTES} bytes"
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    assert refused(folder) == f"{folder}: not a regular file (a folder)"
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        in_thread(lambda: load_config(fifo), fifo)
    assert str(info.value) == f"{fifo}: not a regular file (a FIFO)"
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"[ui]\ntheme = '\xe9'\n")
    assert refused(latin) == f"{latin}: not UTF-8 text (byte 14 is 0xe9)"


def test_a_nested_config_stops_the_launch_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "[keys]\nskip = " + "[" * 5000 + "]" * 5000 + "\n")
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(config))
    assert main(["tiny-flux"]) == 2
    err = capsys.readouterr().err
    assert err == f"dit-explore: error: {config}: cannot read: arrays or tables nested too deeply\n"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_a_config_that_is_dev_zero_is_never_read() -> None:
    done = cli("tiny-flux", env={"DIT_EXPLORE_CONFIG": "/dev/zero"})
    assert (done.returncode, done.stderr) == (2, "dit-explore: error: /dev/zero: not a regular file (a character device)\n")


@pytest.mark.parametrize(("text", "rest"), [
    ('name = "t"\ncolors = 5\n', "colors: expected a table, got 5"),
    ('name = "t"\nvariables = ["x"]\n', "variables: expected a table, got ['x']"),
    ('name = "t"\nx = ' + "[" * 5000 + "]" * 5000 + "\n", "cannot read theme: arrays or tables nested too deeply"),
])
def test_a_bad_user_theme_is_one_line(tmp_path: Path, text: str, rest: str) -> None:
    from dit_explore.tui.themes import ThemeError, available_themes

    (tmp_path / "mine.toml").write_text(text)
    with pytest.raises(ThemeError) as info:
        available_themes(tmp_path)
    assert str(info.value) == f"{tmp_path / 'mine.toml'}: {rest}"


def test_a_user_theme_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    from dit_explore.tui.themes import ThemeError, available_themes

    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    with pytest.raises(ThemeError) as info:
        in_thread(lambda: available_themes(tmp_path), fifo)
    assert str(info.value) == f"{fifo}: not a regular file (a FIFO)"
