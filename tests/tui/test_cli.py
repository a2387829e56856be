"""`dit-explore [MODEL]`: everything is checked before the screen opens; bad input is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from dit_explore.tui.cli import main


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["no-such-model"], "unknown model 'no-such-model'"),
        (["tiny-flux", "--plan", "{bad}"], "order.single: block index out of range at '8-9'"),
        (["tiny-flux", "--plan", "{missing}"], "no such file"),
        (["tiny-flux", "--theme", "neon"], "--theme neon: no such theme (available: dit-dark, dit-light)"),
        (["tiny-flux", "--graphics", "ascii"], "invalid choice: 'ascii'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, args: list[str], fragment: str) -> None:
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(tmp_path / "no-config.toml"))
    bad = tmp_path / "bad.plan.toml"
    bad.write_text('version = 1\n[order]\nsingle = "0-9"\n')
    argv = [a.format(bad=bad, missing=tmp_path / "missing.plan.toml") for a in args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_a_bad_config_file_stops_the_launch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[keys]\nfly = "f"\n')
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(config))
    assert main(["tiny-flux"]) == 2
    assert "keys.fly: unknown action" in capsys.readouterr().err


def test_a_config_binding_two_actions_to_one_key_stops_the_launch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[keys]\nskip = "j"\n')  # j moves the cursor down
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(config))
    from dit_explore.tui import errors
    from dit_explore.tui.app import ExplorerApp

    monkeypatch.setattr(ExplorerApp, "run", lambda self, *a, **k: 0)  # were it accepted, no terminal is taken
    monkeypatch.setattr(errors, "start_logging", lambda: tmp_path / "tui.log")
    assert main(["tiny-flux"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "keys.skip: 'j' is also the key of grid.down" in line
