"""The terminal probe's reading of what came back: the terminal's answers out, the user's keys kept."""

from __future__ import annotations

import io

from dit_explore.tui.probe import probe, split_answers


def test_answers_are_taken_out_and_typed_keys_kept_in_order() -> None:
    text = "j\x1b_Gi=31;OK\x1b\\s\x1b[6;20;10tx\x1b[?62;4;22c?"
    found, typed = split_answers(text)
    assert found == {"tgp": True, "cell": (10, 20), "sixel": True, "da1": True}
    assert typed == "jsx?"  # a "?" the user typed stays a key


def test_a_terminal_without_graphics_or_cell_size_answers_only_the_sentinel() -> None:
    found, typed = split_answers("\x1b[?1;2c")
    assert found == {"sixel": False, "da1": True} and typed == ""
    found, _ = split_answers("\x1b_Gi=31;ENOTSUPPORTED:x\x1b\\\x1b[?1;2c")
    assert found["tgp"] is False


def test_without_a_terminal_auto_means_half_cell_and_nothing_is_asked() -> None:
    out = io.StringIO()
    facts = probe("auto", stdin=io.StringIO(""), stdout=out)
    assert (facts.graphics, facts.cell, facts.typed) == ("halfcell", None, "") and out.getvalue() == ""
    assert probe("sixel", stdin=io.StringIO(""), stdout=io.StringIO()).graphics == "sixel"
