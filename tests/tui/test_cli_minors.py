"""Small things of the command line a user meets: one list of themes (--theme, the config, the
palette), argparse errors that name the subcommand, `plans --from-groups` on a missing folder, and
single-block ranges in generated plan comments."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does

from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.similarity import SimilarityResult, StackResult
from dit_explore.themes import __file__ as themes_init
from dit_explore.tui.cli import main
from dit_explore.tui.themes import available_themes


def shipped_names() -> set[str]:
    return {tomllib.loads(p.read_text())["name"] for p in Path(themes_init).parent.glob("*.toml")}


@pytest.fixture
def user_theme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user theme "mine" in $XDG_CONFIG_HOME/dit-explore/themes, and no config file."""
    folder = tmp_path / "xdg" / "dit-explore" / "themes"
    folder.mkdir(parents=True)
    text = (Path(themes_init).parent / "dark.toml").read_text()
    (folder / "mine.toml").write_text(re.sub(r'(?m)^name = ".*"$', 'name = "mine"', text))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(tmp_path / "no-config.toml"))
    return "mine"


def launch(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """main(argv) with the explorer's run replaced: (exit code, the themes it was started with)."""
    from dit_explore.tui import errors
    from dit_explore.tui.app import ExplorerApp

    started: list[str] = []

    def run(self: ExplorerApp, *args: Any, **kwargs: Any) -> int:
        started.append(self._theme_name)
        return 0

    monkeypatch.setattr(ExplorerApp, "run", run)
    monkeypatch.setattr(errors, "start_logging", lambda: Path("unused.log"))
    return main(argv), started


def test_the_cli_accepts_every_theme_it_lists_and_no_other(user_theme: str, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    expected = shipped_names() | {user_theme}
    assert expected == {"dit-dark", "dit-light", "mine"}
    for name in sorted(expected):
        assert launch(["tiny-flux", "--theme", name], monkeypatch) == (0, [name])
    for builtin in ("dracula", "textual-dark", "nord"):  # Textual's: they lack the grid's group colors
        code, started = launch(["tiny-flux", "--theme", builtin], monkeypatch)
        assert (code, started) == (2, [])
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dit-explore: error: --theme {builtin}: no such theme (available: dit-dark, dit-light, mine)"]


def test_a_config_theme_that_does_not_exist_names_the_config_key(tmp_path: Path, user_theme: str,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ui]\ntheme = "dracula"\n')
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(config))
    assert launch(["tiny-flux"], monkeypatch) == (2, [])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{config}: ui.theme = dracula: no such theme (available: dit-dark, dit-light, mine)" in line
    config.write_text('[ui]\ntheme = "mine"\n')
    assert launch(["tiny-flux"], monkeypatch) == (0, ["mine"])


def test_the_palette_offers_the_same_themes(tmp_path: Path, user_theme: str) -> None:
    """The palette's "Theme" command lists exactly the themes --theme accepts (and picking one works)."""
    from textual.command import CommandPalette
    from textual.widgets import OptionList

    from tests.tui.test_snapshots import flux_app

    app = flux_app(tmp_path)
    found: list[str] = []

    async def scenario() -> None:
        async with app.run_test(size=(150, 48)) as pilot:
            await pilot.pause()
            assert set(app.available_themes) == set(available_themes()) == {"dit-dark", "dit-light", "mine"}
            app.action_change_theme()
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                await pilot.pause(0.05)
                if isinstance(app.screen, CommandPalette):
                    options = app.screen.query_one(OptionList)
                    found[:] = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
                    if found:
                        break
                assert asyncio.get_running_loop().time() < deadline, "the theme palette never listed anything"
            await pilot.press(*"mine", "enter")
            await pilot.pause()
            assert app.theme == "mine"

    asyncio.run(scenario())
    assert sorted(found) == ["dit-dark", "dit-light", "mine"]


@pytest.mark.parametrize(
    ("argv", "command", "fragment"),
    [
        (["run", "--out", "x", "--bogus"], "run", "unrecognized arguments: --bogus"),
        (["run", "--out", "x", "--seed", "abc"], "run", "argument --seed: invalid int value: 'abc'"),
        (["run"], "run", "the following arguments are required: --out"),
        (["analyze", "--out", "x", "--bogus"], "analyze", "unrecognized arguments: --bogus"),
        (["plans", "tiny-flux", "--from-groups", "x", "--bogus"], "plans", "unrecognized arguments: --bogus"),
        (["plans"], "plans", "the following arguments are required: MODEL, --from-groups"),
        (["bench", "--bogus"], "bench", "unrecognized arguments: --bogus"),
        (["bench", "--dtype", "int8"], "bench", "argument --dtype: invalid choice: 'int8'"),
        (["models", "--bogus"], "models", "unrecognized arguments: --bogus"),
        (["tiny-flux", "--bogus"], None, "unrecognized arguments: --bogus"),  # the explorer's own parser
    ],
)
def test_argparse_errors_name_the_subcommand(argv: list[str], command: str | None, fragment: str,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("DIT_EXPLORE_CONFIG", str(tmp_path / "no-config.toml"))
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    prog = f"dit-explore {command}" if command else "dit-explore"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{prog}: error: ") and fragment in line
    assert line.endswith(f"(see {prog} --help)")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing", "no such file or folder (an analyze output folder, or its similarity.json)"),
        (lambda d: d, "no similarity.json in this folder (an analyze output folder, or its similarity.json)"),
    ],
)
def test_plans_from_missing_groups_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               make: Any, fragment: str) -> None:
    source = make(tmp_path)
    assert main(["plans", "tiny-flux", "--from-groups", str(source), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"dit-explore plans: error: --from-groups {source}: {fragment}"]
    assert "Errno" not in err and "Traceback" not in err and not (tmp_path / "out").exists()


def analysis(folder: Path, groups: dict[str, list[tuple[int, int]]]) -> Path:
    """A similarity.json for tiny-flux (double 4, single 8) with the given groups."""
    layout = resolve("tiny-flux").layout
    stacks = {s.name: StackResult(s.blocks, [[1.0] * s.blocks for _ in range(s.blocks)], groups[s.name])
              for s in layout.stacks}
    order = [(s.name, i) for s in layout.stacks for i in range(s.blocks)]
    n = len(order)
    result = SimilarityResult("tiny-flux", stacks, order, [[1.0] * n for _ in range(n)], [(0, 0), (1, n - 1)],
                              ["p"], 2, 0)
    folder.mkdir(parents=True)
    (folder / "similarity.json").write_text(json.dumps(result.to_json()))
    return folder


def test_generated_plans_write_single_block_ranges_as_one_index(tmp_path: Path) -> None:
    """A one-block group reads "first 0" / "skip middle 1", never "0-0" / "1-1"; longer ones keep "a-b"."""
    groups = {"double": [(0, 0), (1, 1), (2, 2), (3, 3)], "single": [(0, 1), (2, 2), (3, 6), (7, 7)]}
    folder = analysis(tmp_path / "an", groups)
    out = tmp_path / "plans"
    assert main(["plans", "tiny-flux", "--from-groups", str(folder), "--out", str(out)]) == 0
    files = sorted(out.glob("*.plan.toml"))
    assert len(files) == 6 * 4  # six strategies for each of the four middle groups
    for path in files:
        text = path.read_text()
        assert not re.search(r"\b(\d+)-\1\b", text), (path.name, text)  # no "5-5"
        comment = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
        stack = path.name.split("-")[0]
        labels = {"double": "first 0, middle 1 1, middle 2 2, last 3",
                  "single": "first 0-1, middle 1 2, middle 2 3-6, last 7"}[stack]
        assert f"({labels})" in comment, comment

    def plan(name: str) -> dict[str, Any]:
        return tomllib.loads((out / name).read_text())

    assert plan("double-middle1-2-skip-middle.plan.toml")["name"] == "double: skip middle 1"
    assert "Range 1: " in (out / "double-middle1-2-skip-middle.plan.toml").read_text()
    assert "(1 block)" in plan("double-middle1-2-skip-middle.plan.toml")["note"]
    assert plan("double-middle1-2-skip-middle.plan.toml")["order"]["double"] == "0, 2-3"
    assert plan("single-middle1-4-reverse.plan.toml")["name"] == "single: reverse middle 2"
    assert plan("single-middle2-2-skip-middle.plan.toml")["name"] == "single: skip middle 3-6"
    assert "(4 blocks)" in plan("single-middle2-2-skip-middle.plan.toml")["note"]
    assert "Range 3-6: " in (out / "single-middle2-5-parallel.plan.toml").read_text()
