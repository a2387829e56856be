"""The README's explorer section matches the keys the explorer binds: every action id is listed, and
every key of every action appears in the key table (so a new or rebound key cannot go undocumented)."""

from __future__ import annotations

import re
from pathlib import Path

from dit_explore.tui.keys import ALL_KEYS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SHOWN = {"question_mark": "?", "percent_sign": "%", "left_square_bracket": "[", "right_square_bracket": "]"}


def explorer_section() -> str:
    return README[README.index("## The explorer"): README.index("## Commands")]


def test_every_action_id_is_listed() -> None:
    section = explorer_section()
    listed = section[section.index("Action ids:"):]
    listed = listed[: listed.index(".\n")]
    assert re.findall(r"`([a-z.-]+)`", listed) == [k.id for k in ALL_KEYS]


def test_every_key_is_in_the_key_table() -> None:
    section = explorer_section()
    table = "\n".join(line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| key"))
    documented = set(re.findall(r"`([^`]+)`", table))
    arrows = {"left", "right", "up", "down", "shift+left", "shift+right", "shift+up", "shift+down"}
    missing = []
    for key in ALL_KEYS:
        for name in key.keys.split(","):
            name = SHOWN.get(name, name)
            if name in arrows:
                assert ("arrows" in table and "shift+arrows" in table), name
            elif name not in documented:
                missing.append(f"{key.id}: {name}")
    assert missing == []
