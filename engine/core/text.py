"""Text that reaches a terminal or a log from a value the user (or a shared file) supplied.

Every error line that echoes a value goes through `shown`: control characters (ESC, BEL, newlines, DEL,
the C1 range) are written as escapes, so a plan file cannot move the cursor, retitle the terminal or split
one problem into two lines; and a long value is cut, so an error line stays a line.

Torch-free: shared by both processes.
"""

from __future__ import annotations

import unicodedata

SHOWN_LIMIT = 200  # characters of an echoed value in an error line

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control or format character (Unicode categories Cc and Cf: ESC, BEL, newline,
    DEL, C1, bidi overrides) written as a backslash escape."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)  # other non-printables (e.g. non-ASCII spaces) cannot steer a terminal
    return "".join(out)


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """A value as an error line echoes it: str() of it, control characters escaped, cut at `limit`
    characters with the full length said."""
    text = escape_controls(str(value))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def one_line(message: str) -> str:
    """A message as exactly one terminal line: control characters (newlines included) escaped."""
    return escape_controls(message)


def printable_lines(message: str) -> str:
    """A multi-line message (one problem per line) with every line's control characters escaped; the
    line breaks between problems stay."""
    return "\n".join(escape_controls(line) for line in message.split("\n"))
