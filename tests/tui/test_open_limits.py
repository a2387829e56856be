"""ctrl+o on a hostile plan file (hardening items 13 and 15): nested TOML, a 5000-digit index, a FIFO,
a huge name or a huge file is a notification of one problem, and the app goes on; the open dialog lists
such files with their problem instead of hanging on them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import textual_image.widget  # noqa: F401 - imported before any app runs, as the CLI does
from textual.pilot import Pilot

from dit_explore.engine.core import plan as plans
from dit_explore.tui.screens.dialogs import plan_files
from tests.guarded import in_thread
from tests.tui.pilot import drive
from tests.tui.pilot import offline_app as make_app

HOSTILE = {
    "nested.plan.toml": ("version = 1\nname = " + "[" * 20_000 + "]" * 20_000 + "\n",
                         "not a plan: arrays or tables nested too deeply"),
    "digits.plan.toml": ('version = 1\n[order]\nsingle = "' + "7" * 5000 + '"\n',
                         "order.single: a block index must be at most 9999 at '7777"),
    "range.plan.toml": ('version = 1\n[order]\nsingle = "0-99999999"\n',
                        "order.single: a block index must be at most 9999 at '99999999' (column 3)"),
    "name.plan.toml": (f'version = 1\nname = "{"n" * 5000}"\n', "name: at most 200 characters, got 5000"),
    "huge.plan.toml": ('version = 1\nname = "' + "n" * (2 << 20) + '"\n',
                       f"{(2 << 20) + 22} bytes; plan files are at most {plans.MAX_PLAN_BYTES} bytes"),
    "esc.plan.toml": ('version = 1\n"\\u001b]0;pwned\\u0007" = 1\n', "\\x1b]0;pwned\\x07: unknown key"),
}


def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plans"
    folder.mkdir()
    for name, (text, _) in HOSTILE.items():
        (folder / name).write_text(text)
    os.mkfifo(folder / "pipe.plan.toml")
    return folder


def test_opening_hostile_plans_notifies_and_the_app_goes_on(tmp_path: Path) -> None:
    folder = hostile_folder(tmp_path)
    app = make_app(tmp_path)
    seen: list[str] = []

    async def scenario(pilot: Pilot[Any]) -> None:
        for name in [*HOSTILE, "pipe.plan.toml"]:
            app._open(str(folder / name))
            await pilot.pause()
            message = str(list(app._notifications)[-1].message) if list(app._notifications) else ""
            seen.append(message)
            assert app.plan == plans.Plan() and app.is_running
        app._open(str(folder / "good.plan.toml"))  # still works afterwards
        await pilot.pause()

    (folder / "good.plan.toml").write_text('version = 1\n[order]\nsingle = "0-1, 6-7"\n')
    in_thread(lambda: drive(app, scenario), folder / "pipe.plan.toml", timeout=60)
    expected = [fragment for _, fragment in HOSTILE.values()] + ["not a regular file (a FIFO)"]
    for message, fragment, name in zip(seen, expected, [*HOSTILE, "pipe.plan.toml"]):
        head = f"[b]cannot open plan:[/b] {folder / name}: "
        assert message == head + fragment or (message.startswith(head) and fragment in message), (name, message)
        assert "\n" not in message and message.isprintable()
    assert app.plan.order("single") == (0, 1, 6, 7)


def test_the_open_dialog_lists_hostile_files_with_their_problem(tmp_path: Path) -> None:
    folder = hostile_folder(tmp_path)
    files = in_thread(lambda: plan_files([folder], "tiny-flux", None), folder / "pipe.plan.toml")
    problems = {f.label: f.problem for f in files}
    assert problems["pipe"] == "not a regular file (a FIFO)"
    for name, (_, fragment) in HOSTILE.items():
        problem = problems[name.removesuffix(".plan.toml")]
        assert problem is not None and fragment in problem and problem.isprintable(), (name, problem)
