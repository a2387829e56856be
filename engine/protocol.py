"""The wire protocol between the TUI (client) and the engine process: framing and message types.

A frame is a fixed 12-byte header — magic b"DXP1", JSON length, binary length (big-endian uint32) —
then a UTF-8 JSON object, then raw binary (PNG bytes, possibly empty). No base64, no line-delimited
JSON: a 1024x1024 PNG is megabytes and asyncio's readline() fails past 64 KiB. docs/protocol.md
documents every message.

Torch-free: shared by both processes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

PROTOCOL_VERSION = 1
MAGIC = b"DXP1"
HEADER = struct.Struct(">4sII")
MAX_JSON = 4 << 20  # 4 MiB: similarity matrices are the largest JSON payloads
MAX_BINARY = 256 << 20  # 256 MiB: a PNG of the largest image a model can make

# Requests (client -> engine) and events (engine -> client), by "type".
REQUESTS = ("run", "analyze", "cancel", "ping", "shutdown")
EVENTS = ("hello", "loading", "ready", "progress", "image", "analysis", "done", "error", "pong")


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol; the message says how, in one line."""


class FrameTooLarge(ProtocolError):
    def __init__(self, json_len: int, bin_len: int) -> None:
        super().__init__(f"frame too large: {json_len} bytes of JSON (max {MAX_JSON}), "
                         f"{bin_len} bytes of binary (max {MAX_BINARY})")
        self.json_len = json_len
        self.bin_len = bin_len


def encode(message: Mapping[str, Any], binary: bytes = b"") -> bytes:
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(payload) > MAX_JSON or len(binary) > MAX_BINARY:
        raise FrameTooLarge(len(payload), len(binary))
    return HEADER.pack(MAGIC, len(payload), len(binary)) + payload + binary


def parse_header(header: bytes) -> tuple[int, int]:
    magic, json_len, bin_len = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame header {header[:4]!r} (expected {MAGIC!r}): not a dit-explore peer?")
    if json_len > MAX_JSON or bin_len > MAX_BINARY:
        raise FrameTooLarge(json_len, bin_len)
    return json_len, bin_len


def parse_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed JSON in frame: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message


class FrameReader:
    """Blocking frame reader (the engine side), over a binary stream such as stdin.

    It keeps the stream in step with the peer whatever arrives: a frame that is too large is skipped
    whole and reported by raising FrameTooLarge; after a bad header the stream is scanned for the next
    MAGIC, which is kept as the start of the next frame, and ProtocolError is raised.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._pending = b""

    def _read(self, n: int) -> bytes | None:
        out = self._pending[:n]
        self._pending = self._pending[n:]
        while len(out) < n:
            chunk = self._raw.read(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def read_frame(self) -> tuple[dict[str, Any], bytes] | None:
        """One frame as (message, binary); None at the end of the stream."""
        header = self._read(HEADER.size)
        if header is None:
            return None
        try:
            json_len, bin_len = parse_header(header)
        except FrameTooLarge as exc:
            self._skip(exc.json_len + exc.bin_len)
            raise
        except ProtocolError:
            self._resync(header)
            raise
        payload = self._read(json_len)
        binary = self._read(bin_len) if bin_len else b""
        if payload is None or binary is None:
            return None
        return parse_payload(payload), binary

    def _skip(self, n: int) -> None:
        while n > 0:
            chunk = self._read(min(n, 1 << 20))
            if chunk is None:
                return
            n -= len(chunk)

    def _resync(self, seen: bytes) -> None:
        window = seen[1:]
        while MAGIC not in window:
            chunk = self._read(1)
            if chunk is None:
                return
            window = (window + chunk)[-(HEADER.size + len(MAGIC)) :]
        self._pending = window[window.index(MAGIC) :] + self._pending


# ------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class Event:
    """An event from the engine: `type`, its JSON fields, and binary payload (PNG) if any."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    binary: bytes = b""

    @property
    def job(self) -> int | None:
        job = self.data.get("job")
        return job if isinstance(job, int) else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def event_from_frame(message: dict[str, Any], binary: bytes) -> Event:
    kind = message.get("type")
    if kind not in EVENTS:
        raise ProtocolError(f"unknown event type {kind!r}")
    return Event(str(kind), {k: v for k, v in message.items() if k != "type"}, binary)
