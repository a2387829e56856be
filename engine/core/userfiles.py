"""Reading a file the user named (a plan, a prompts file, a similarity.json, the config, a cache file).

Every such read is bounded and cannot hang: the file is opened without blocking (a FIFO named as a plan
must not wait forever for a writer), it must be a regular file (not /dev/zero, a FIFO, a folder or a
socket), and it must be at most `limit` bytes, checked on its size and again while reading (a file that
grows meanwhile is still cut off at limit + 1 bytes). Every failure is a `UserFileError`: one line that
names the file, control characters escaped.

Torch-free: shared by the TUI and the engine.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from dit_explore.engine.core.text import escape_controls

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_CHUNK = 1 << 16


def finite_number(value: object) -> bool:
    """A number read from a user's file (TOML, JSON) that is finite as a float: not a boolean, not NaN or
    infinite, and not an integer too large for a float (`math.isfinite` and `float` raise OverflowError on
    one: TOML and JSON both allow them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class UserFileError(ValueError):
    """A user-named file that cannot be read as asked: one line naming the file."""


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a plain file"


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot read: permission denied"
    if exc.errno == errno.ENXIO:
        return "not a regular file (a socket or a device without a reader)"
    return f"cannot read: {exc.strerror or exc}"


def _too_large(what: str, size: int, limit: int, kind: str, *, read: bool = False) -> UserFileError:
    """`size` is the file's size, or (`read`) the limit + 1 bytes read before reading stopped."""
    more = f"more than {limit} bytes" if read else f"{size} bytes"
    return UserFileError(f"{what}: {more}; {kind} are at most {limit} bytes")


@contextlib.contextmanager
def open_user_file(path: str | os.PathLike[str], *, limit: int, what: str | None = None,
                   kind: str = "such files") -> Iterator[BinaryIO]:
    """The file at `path`, open for binary reading, once it is known to be a regular file of at most
    `limit` bytes. `what` names it in errors (default: the path); `kind` says what the limit is for
    ("plan files")."""
    what = escape_controls(str(path) if what is None else what)
    try:
        mode = os.stat(path).st_mode  # no open yet: opening some devices has effects
    except OSError as exc:
        raise UserFileError(f"{what}: {_describe(exc)}") from None
    except ValueError as exc:  # a NUL in the path
        raise UserFileError(f"{what}: not a file name ({exc})") from None
    if not stat.S_ISREG(mode):
        raise UserFileError(f"{what}: not a regular file ({kind_of(mode)})")
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    except OSError as exc:
        raise UserFileError(f"{what}: {_describe(exc)}") from None
    try:
        info = os.fstat(fd)  # what was opened, which may not be what was looked at
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(f"{what}: not a regular file ({kind_of(info.st_mode)})")
        if info.st_size > limit:
            raise _too_large(what, info.st_size, limit, kind)
        if _O_NONBLOCK and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: reads never wait anyway
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def read_user_bytes(path: str | os.PathLike[str], *, limit: int, what: str | None = None,
                    kind: str = "such files") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `UserFileError` (one line) otherwise."""
    with open_user_file(path, limit=limit, what=what, kind=kind) as file:
        try:
            data = file.read(limit + 1)  # a regular file: one read returns everything up to the limit
        except OSError as exc:
            raise UserFileError(f"{escape_controls(str(path) if what is None else what)}: {_describe(exc)}") from None
    if len(data) > limit:  # it grew since it was looked at
        raise _too_large(escape_controls(str(path) if what is None else what), len(data), limit, kind, read=True)
    return data


def read_user_text(path: str | os.PathLike[str], *, limit: int, what: str | None = None,
                   kind: str = "such files") -> str:
    """`read_user_bytes` decoded as UTF-8 (a leading BOM dropped); not UTF-8 is one line too."""
    data = read_user_bytes(path, limit=limit, what=what, kind=kind)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = escape_controls(str(path) if what is None else what)
        raise UserFileError(f"{where}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None
