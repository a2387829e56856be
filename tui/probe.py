"""Ask the terminal once, before the interface starts, what it can draw — without losing or misreading
a key the user types meanwhile.

textual-image probes the terminal when it is imported: it writes queries and reads the answers from
stdin with short timeouts. A key typed during that read is taken for an answer and lost, and an answer
that comes late (over SSH) reaches the interface as keys: "\\x1b[?62;4c" contains "?", which opened the
help screen. So dit-explore probes by itself: it sends the same queries (Kitty graphics, the cell size
when the kernel does not know it, and primary device attributes last, which every terminal answers, as
a sentinel), reads everything until the sentinel's answer, takes the answers out and keeps whatever else
came as typed keys; then it imports textual-image with probing off, hands it the answers, and the app
replays the kept keys once it runs (`replay`).

Without a terminal (textual-serve, pipes) nothing is probed, and `auto` means half-cell images: they
carry color everywhere a web terminal draws text.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

PROBE_TIMEOUT = 2.0  # seconds to wait for the sentinel's answer
_DA1 = re.compile(r"\x1b\[\?([0-9;]*)c")
_CELL = re.compile(r"\x1b\[6;(\d+);(\d+)t")
_TGP = re.compile(r"\x1b_G([^\x1b]*)\x1b\\", re.DOTALL)
_TGP_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"


@dataclass(frozen=True)
class TerminalFacts:
    """What the terminal said it can do, and what the user typed while it was asked."""

    graphics: str  # the image protocol to use: "sixel", "tgp", "halfcell" or "unicode"
    cell: tuple[int, int] | None  # pixels per cell (width, height), when known
    typed: str  # keys typed during the probe, to be replayed into the app
    sixel: bool = False
    tgp: bool = False


def split_answers(text: str) -> tuple[dict[str, Any], str]:
    """The terminal's answers to the probe's queries, and the rest (keys the user typed)."""
    found: dict[str, Any] = {}
    if (match := _DA1.search(text)) is not None:
        found["sixel"] = "4" in match.group(1).split(";")
        found["da1"] = True
    if (match := _CELL.search(text)) is not None:
        found["cell"] = (int(match.group(2)), int(match.group(1)))  # the answer is rows;height;width
    if (match := _TGP.search(text)) is not None:
        found["tgp"] = match.group(1).rsplit(";", 1)[-1] == "OK"
    rest = _TGP.sub("", _CELL.sub("", _DA1.sub("", text, count=1), count=1), count=1)
    return found, rest


def _tmux_wrap(sequence: str) -> str:
    """A sequence tmux passes through to the terminal it runs in (when passthrough is allowed)."""
    return "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"


@contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)  # keys arrive one by one, unechoed
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _read_until_sentinel(fd: int, timeout: float) -> str:
    """Everything stdin delivers until the primary-DA answer has arrived (or `timeout` has passed)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
        if _DA1.search(b"".join(chunks).decode(errors="replace")):
            break
    return b"".join(chunks).decode(errors="replace")


def _cell_from_kernel(out: IO[str]) -> tuple[int, int] | None:
    import fcntl
    import struct
    import termios

    try:
        rows, cols, width, height = struct.unpack("HHHH", fcntl.ioctl(out.fileno(), termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (width // cols, height // rows) if rows and cols and width and height else None


def probe(requested: str, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> TerminalFacts:
    """Ask the terminal (once) and choose the image protocol: `requested` unless it is `auto`."""
    stdin = stdin or sys.__stdin__
    stdout = stdout or sys.__stdout__
    if stdin is None or stdout is None or not (stdin.isatty() and stdout.isatty()):
        return TerminalFacts("halfcell" if requested == "auto" else requested, None, "")
    fd = stdin.fileno()
    cell = _cell_from_kernel(stdout)
    with _cbreak(fd):
        tgp_query = _tmux_wrap(_TGP_QUERY) if os.environ.get("TMUX") else _TGP_QUERY
        stdout.write(tgp_query + ("" if cell else "\x1b[16t") + "\x1b[c")
        stdout.flush()
        text = _read_until_sentinel(fd, PROBE_TIMEOUT)
    found, typed = split_answers(text)
    cell = cell or found.get("cell")
    sixel, tgp = bool(found.get("sixel")), bool(found.get("tgp"))
    graphics = requested
    if requested == "auto":
        graphics = "sixel" if sixel else "tgp" if tgp else "halfcell"
    return TerminalFacts(graphics, cell, typed, sixel, tgp)


class _NotATerminal:
    """sys.__stdout__ as textual-image sees it while it is imported: not a terminal, so it probes nothing."""

    def __init__(self, real: IO[str]) -> None:
        self._real = real

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def import_textual_image(facts: TerminalFacts) -> None:
    """Import textual-image without its own probes, and give it the answers `probe` got (its caches:
    `probe_terminal` in 0.13+, `get_cell_size` in 0.12)."""
    real = sys.__stdout__
    if real is not None:
        sys.__stdout__ = _NotATerminal(real)  # type: ignore[misc, assignment]
    try:
        import textual_image.widget  # noqa: F401 - the import is the point: caches filled, no probe
        from textual_image import _terminal
    finally:
        sys.__stdout__ = real  # type: ignore[misc]
    width, height = facts.cell or (10, 20)
    cell = _terminal.CellSize(width, height)
    if hasattr(_terminal, "probe_terminal"):
        capabilities = _terminal.TerminalCapabilities(cell, sixel=facts.sixel, tgp=facts.tgp)
        _terminal.probe_terminal._result = capabilities
    else:
        _terminal.get_cell_size._result = cell


def replay(app: Any, typed: str) -> None:
    """Deliver keys typed during the probe to a running app, as its driver would have (Textual's own
    xterm parser turns the text into key events)."""
    if not typed:
        return
    from textual._xterm_parser import XTermParser  # Textual is pinned: this private parser is stable

    parser = XTermParser()
    for event in [*parser.feed(typed), *parser.tick()]:
        app.post_message(event)
