"""The wire protocol between the TUI (client) and the engine process: every request and event as a typed
value, defined once here and used by the server, the client and the app alike; and the framing.

A frame is a fixed 12-byte header — magic b"DXP1", JSON length, binary length (big-endian uint32) —
then a UTF-8 JSON object, then raw binary (PNG bytes, possibly empty). No base64, no line-delimited
JSON: a 1024x1024 PNG is megabytes and asyncio's readline() fails past 64 KiB.

Each message is a frozen dataclass with a `TYPE` (the JSON "type") whose fields are the JSON fields;
a `bytes` field, at most one per message, travels as the frame's binary part. `encode`/`decode` turn
values into frames and back, checking every field against its annotation, so a renamed or mistyped
field is a ProtocolError at the boundary, never a silent None later. docs/protocol.md's message tables
are generated from these classes (`markdown_tables`; a test keeps them equal).

Torch-free: shared by both processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import struct
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any, ClassVar, TypeVar, Union

from dit_explore.engine.core.families import Defaults
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.plan import Sampling
from dit_explore.engine.core.sampling import BlockRuns, Settings, Timing
from dit_explore.engine.core.similarity import SimilarityResult
from dit_explore.engine.core.text import shown

PROTOCOL_VERSION = 3
MAGIC = b"DXP1"
HEADER = struct.Struct(">4sII")
MAX_JSON = 4 << 20  # 4 MiB: similarity matrices are the largest JSON payloads
MAX_BINARY = 256 << 20  # 256 MiB: a PNG of the largest image a model can make
ECHO_LIMIT = 60  # characters of a received name or value that an error message repeats


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol; the message says how, in one line."""


class FrameTooLarge(ProtocolError):
    def __init__(self, json_len: int, bin_len: int, max_json: int = MAX_JSON, max_binary: int = MAX_BINARY) -> None:
        super().__init__(f"frame too large: {json_len} bytes of JSON (max {max_json}), "
                         f"{bin_len} bytes of binary (max {max_binary})")
        self.json_len = json_len
        self.bin_len = bin_len


# -------------------------------------------------------------------------------------------- words


class Status(StrEnum):
    """How a job (a run, an analysis or a sweep) stands: running, or how it ended."""

    RUNNING = "running"
    OK = "ok"
    CANCELLED = "cancelled"  # the user cancelled it
    SUPERSEDED = "superseded"  # a newer request replaced it (latest wins)
    ERROR = "error"  # it failed; the engine serves on
    CRASHED = "crashed"  # the engine died under it


class EngineState(StrEnum):
    """The engine process as the user sees it."""

    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    CRASHED = "crashed"
    UNRESPONSIVE = "unresponsive"
    STOPPED = "stopped"


class Role(StrEnum):
    """What an image or a progress event belongs to."""

    PLAN = "plan"  # the plan's image
    BASELINE = "baseline"  # the identity plan's image, same prompt and settings
    ANALYZE = "analyze"  # a similarity analysis (progress only)
    SWEEP = "sweep"  # a sweep (progress only: items, not steps)


def doc(text: str, default: Any = dataclasses.MISSING) -> Any:
    """A message field with its documentation (for docs/protocol.md) and, optionally, a default."""
    return field(default=default, metadata={"doc": text})


# ------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True, kw_only=True)
class Run:
    """Run a plan on prompts, each followed by its baseline. Validated at once (plan against the model's
    layout, sizes, steps); an invalid run gets `error` and `done` with status `error`. Latest wins: a
    valid run cancels the job in flight and replaces a queued one (which gets `done` `superseded`)."""

    TYPE: ClassVar[str] = "run"
    job: int = doc("job id, chosen by the client, increasing (also across engine restarts)")
    plan: str = doc("the text of a `.plan.toml` file")
    prompts: tuple[str, ...] = doc("non-empty list of non-empty prompts")
    sampling: Sampling = doc("any of `seed`, `steps`, `width`, `height`, `guidance` (`prompt` must be "
                             "null); overrides the plan's `[sampling]`, which overrides the model's defaults",
                             Sampling())
    baseline: bool = doc("also deliver each prompt's baseline", True)
    previews: bool = doc("send a latent preview with each step's `progress`", True)
    out_dir: str | None = doc("run directory to write as results arrive, or null", None)
    plan_source: str | None = doc("name of the plan for messages", None)


@dataclass(frozen=True, kw_only=True)
class Analyze:
    """The similarity analysis: from the on-disk cache when the same model revision, prompts, steps,
    size, seed, guidance and dtype were analyzed before, else measured (with `progress` of role
    `analyze`); then `analysis` and `done`. Latest wins, as for `run`."""

    TYPE: ClassVar[str] = "analyze"
    job: int = doc("job id, as for `run`")
    prompts: tuple[str, ...] | None = doc("prompts, or null for the five built-in ones", None)
    sampling: Sampling = doc("as for `run`", Sampling())
    groups: int | None = doc("group into exactly this many groups, or null: automatic", None)
    use_cache: bool = doc("answer from the on-disk cache when it has this analysis", True)


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """A sweep of `kind` (engine/sweep.py: each plan of the kind against the full model) on one prompt and
    seed with the loaded model, written as `dit-explore sweep` writes it into `out_dir`. A `progress` of
    role `sweep` follows each item (`step`: items done, `steps`: items in all, `label`: the item);
    `done` carries the folder as `path`. A plan that fails is recorded in the sweep and it goes on;
    cancelled, the items finished stay in the folder. Latest wins, as for `run`."""

    TYPE: ClassVar[str] = "sweep"
    job: int = doc("job id, as for `run`")
    kind: str = doc("`skip-each`, `skip-middle-n`, `repeat-middle-n`, `parallel-width` or `step-window`")
    prompt: str = doc("the prompt")
    sampling: Sampling = doc("as for `run` (its `seed` is the sweep's one seed)", Sampling())
    out_dir: str = doc("the sweep's folder: new, or empty")


@dataclass(frozen=True, kw_only=True)
class Cancel:
    """Stop a job before its next block execution; `done` `cancelled` follows. A job the engine never
    had (or, for null, nothing running or queued) gets `error`; one that has ended, nothing (its `done` was
    sent)."""

    TYPE: ClassVar[str] = "cancel"
    job: int | None = doc("the job, or null: the current one", None)


@dataclass(frozen=True, kw_only=True)
class Ping:
    """Answered with `pong` by the reader thread, even while a run or the load is in progress."""

    TYPE: ClassVar[str] = "ping"
    id: int = doc("echoed in the pong")


@dataclass(frozen=True, kw_only=True)
class Shutdown:
    """Cancel what runs and exit with code 0."""

    TYPE: ClassVar[str] = "shutdown"


Request = Run | Analyze | Sweep | Cancel | Ping | Shutdown
REQUESTS: dict[str, type[Any]] = {cls.TYPE: cls for cls in (Run, Analyze, Sweep, Cancel, Ping, Shutdown)}


# -------------------------------------------------------------------------------- events (engine)


@dataclass(frozen=True, kw_only=True)
class Hello:
    """Sent at once, before the weights load: the client can draw the layer grid meanwhile."""

    TYPE: ClassVar[str] = "hello"
    protocol: int = doc(f"protocol version ({PROTOCOL_VERSION})")
    model: str = doc("the model as named")
    location: str = doc("tiny name, repo id or folder")
    kind: str = doc("tiny, alias, repo or local")
    family: str = doc("the model family (flux, sd3, auraflow, ...)")
    layout: Layout = doc("`family`, `stacks`: list of `name`, `attr`, `blocks`, `pre_only_last`")
    defaults: Defaults = doc("`steps`, `guidance`, `width`, `height`, `max_sequence_length`")
    size_multiple: int = doc("width and height must be multiples of this")
    max_side: int | None = doc("largest width or height, or null")
    pid: int = doc("the engine's process id")
    log: str | None = doc("path of the engine's log")
    device: str = doc("device as requested")
    dtype: str | None = doc("dtype as requested, or null: the device's default")
    random_weights: bool = doc("real-size architecture with random weights")
    memory: str = doc("the placement as requested (`--memory`): `auto`, `full`, `offload` or `sequential`", "auto")


@dataclass(frozen=True, kw_only=True)
class Loading:
    TYPE: ClassVar[str] = "loading"
    stage: str = doc("what is being done, in words")
    fraction: float | None = doc("0..1, or null when unknown")
    elapsed: float = doc("seconds since loading began")


@dataclass(frozen=True, kw_only=True)
class Ready:
    TYPE: ClassVar[str] = "ready"
    device: str = doc("e.g. `cuda:0`")
    dtype: str = doc("e.g. `bfloat16`")
    load_seconds: float = doc("seconds the load took")
    random_weights: bool = doc("real-size architecture with random weights")
    available: int | None = doc("bytes a request may use now the model is loaded (CPU: available memory; CUDA: the "
                                "device's free memory), or null when unknown; the TUI checks sizes against it",
                                None)
    quantization: str | None = doc("the blocks' quantization (`int8`, `fp8`, `fp8-weights`), or null: the model's "
                                   "dtype; its baseline is the quantized full model", None)
    placement: str | None = doc("where the weights live, in words (`sequential (27 of 57 blocks resident, text "
                                "encoders offloaded, peak about 22 GB)`), or null: all on the device", None)


@dataclass(frozen=True, kw_only=True)
class Progress:
    """One denoising step done (of a sweep: one item). The binary is a PNG preview at latent resolution (a
    fixed linear latent-to-RGB map, no VAE), absent for the last step or when `previews` is false."""

    TYPE: ClassVar[str] = "progress"
    job: int = doc("the job")
    index: int = doc("prompt index")
    role: Role = doc("`plan`, `baseline`, `analyze` or `sweep`")
    step: int = doc("steps done (`sweep`: items done)")
    steps: int = doc("steps in all (`sweep`: items in all)")
    prompts: int = doc("prompts in all", 1)
    elapsed: float = doc("seconds since this image began (`sweep`: since the sweep began)")
    label: str | None = doc("`sweep`: the item just done (`double: skip 3`); else null", None)
    preview: bytes = doc("the frame's binary: a PNG preview, or empty", b"")


@dataclass(frozen=True, kw_only=True)
class Image:
    """A finished image (the binary: its PNG, carrying its plan for replay)."""

    TYPE: ClassVar[str] = "image"
    job: int = doc("the job")
    index: int = doc("prompt index")
    role: Role = doc("`plan` or `baseline`")
    prompt: str = doc("the prompt")
    cached: bool = doc("a baseline from the cache (no new generation)")
    path: str | None = doc("the file written, or null")
    settings: Settings = doc("`seed`, `steps`, `width`, `height`, `guidance`, `max_sequence_length`")
    timing: Timing = doc("`total`, `text_encode`, `text_encode_cached`, `transformer_steps` (list), `decode`; "
                         "seconds")
    block_runs: BlockRuns = doc("`per_step`, `full_per_step`, `total`, `full_total`")
    png: bytes = doc("the frame's binary: the PNG")


@dataclass(frozen=True, kw_only=True)
class Speed:
    """The plan against the full model, timed side by side after the plan's images: on the inputs of the
    run's last denoising step, interleaved (plan, full, plan, full, ...) after one warm-up call of each,
    so both are warm and measured under the same conditions (the baseline is never regenerated to time
    it). The measured speedup per step is `full / plan`."""

    TYPE: ClassVar[str] = "speed"
    job: int = doc("the job")
    plan: float = doc("median seconds of a transformer call under the plan (with step tables: each set of orders "
                      "that changes something timed, weighted by the steps that run it)")
    full: float = doc("median seconds of a transformer call of the full model")
    calls: int = doc("timed calls of each")
    steps: int = doc("denoising steps of the run")
    active: int = doc("steps the plan applies at (its `active_steps`, or the steps its step tables change; the "
                      "others run the full model)")
    blocks: dict[str, tuple[float, ...]] = doc("seconds of each block in a call of the full model, by stack")

    @property
    def speedup(self) -> float:
        """Measured speedup of the whole denoising loop: the full model's steps over the plan's (the plan
        runs at its active steps, the full model at the others)."""
        plan_loop = self.active * self.plan + (self.steps - self.active) * self.full
        return self.steps * self.full / plan_loop if plan_loop > 0 else float("nan")


@dataclass(frozen=True, kw_only=True)
class Analysis:
    TYPE: ClassVar[str] = "analysis"
    job: int = doc("the job")
    cached: bool = doc("from the on-disk cache")
    result: SimilarityResult = doc("the content of similarity.json (`stacks`, `all`, `prompts`, `steps`, "
                                   "`seed`, `model`, `settings`, `key`)")


@dataclass(frozen=True, kw_only=True)
class Done:
    TYPE: ClassVar[str] = "done"
    job: int = doc("the job")
    status: Status = doc("`ok`, `cancelled`, `superseded` or `error`")
    message: str | None = doc("why, for `error`; else null", None)
    images: int = doc("prompts finished (`sweep`: items finished)", 0)
    seconds: float = doc("seconds the job took", 0.0)
    blocks_restored: bool = doc("the model's block lists are its own again", True)
    path: str | None = doc("the run directory (`sweep`: its folder), or null", None)


@dataclass(frozen=True, kw_only=True)
class Error:
    TYPE: ClassVar[str] = "error"
    job: int | None = doc("the job, or null")
    message: str = doc("one line")
    log: str | None = doc("path of the engine log with the traceback")
    fatal: bool = doc("the engine is exiting", False)


@dataclass(frozen=True, kw_only=True)
class Pong:
    TYPE: ClassVar[str] = "pong"
    id: int = doc("the ping's id")
    state: EngineState = doc("`starting`, `loading`, `ready` or `busy`")
    job: int | None = doc("the running job, or null")
    rss: int | None = doc("resident memory in bytes, or null")


# -------------------------------------------------------------------------------- events (client)


@dataclass(frozen=True, kw_only=True)
class Crashed:
    """The engine process ended without having been asked to."""

    TYPE: ClassVar[str] = "crashed"
    exit_code: int | None = doc("its exit code")
    log: str = doc("path of its log")
    log_tail: str = doc("the last lines of its log")


@dataclass(frozen=True, kw_only=True)
class Stopped:
    """The engine process ended after `shutdown()`."""

    TYPE: ClassVar[str] = "stopped"
    exit_code: int | None = doc("its exit code")


@dataclass(frozen=True, kw_only=True)
class Unresponsive:
    """No pong for a while (pings go out every second)."""

    TYPE: ClassVar[str] = "unresponsive"
    seconds: float = doc("seconds without a pong")


@dataclass(frozen=True, kw_only=True)
class Responsive:
    """Pongs again after `unresponsive`."""

    TYPE: ClassVar[str] = "responsive"


EngineEvent = Hello | Loading | Ready | Progress | Image | Speed | Analysis | Done | Error | Pong
ClientEvent = Crashed | Stopped | Unresponsive | Responsive
Event = EngineEvent | ClientEvent
EVENTS: dict[str, type[Any]] = {cls.TYPE: cls for cls in typing.get_args(EngineEvent)}
CLIENT_EVENTS: dict[str, type[Any]] = {cls.TYPE: cls for cls in typing.get_args(ClientEvent)}


# ------------------------------------------------------------------------------------------- codec

T = TypeVar("T")


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _binary_field(cls: type[Any]) -> str | None:
    names = [f.name for f in dataclasses.fields(cls) if _hints(cls)[f.name] is bytes]
    return names[0] if names else None


def to_json(value: Any) -> Any:
    """A typed value as JSON data: dataclasses as objects (their `to_json` where they have one), enums
    as their values, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_json"):
            return value.to_json()
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not isinstance(getattr(value, f.name), bytes)}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(annotation: Any, data: Any, where: str) -> Any:
    """JSON data as a value of `annotation`, checked all the way down; ProtocolError names the field."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if data is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return from_json(option, data, where)
            except ProtocolError as exc:
                problems.append(str(exc))
        raise ProtocolError(problems[0] if len(problems) == 1 else f"{where}: not any of the allowed types")
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        if not isinstance(data, list):
            raise ProtocolError(f"{where}: expected a list, got {_kind(data)}")
        return tuple(from_json(item, v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is dict:
        key_type, item = typing.get_args(annotation)
        if not isinstance(data, dict) or key_type is not str:
            raise ProtocolError(f"{where}: expected an object, got {_kind(data)}")
        return {k: from_json(item, v, f"{where}.{shown(k, ECHO_LIMIT)}") for k, v in data.items()}
    if annotation is Any:
        return data
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        try:
            return annotation(data)
        except ValueError:
            allowed = ", ".join(m.value for m in annotation)
            raise ProtocolError(f"{where}: {shown(repr(data), ECHO_LIMIT)} is not one of {allowed}") from None
    if annotation is bool:
        if not isinstance(data, bool):
            raise ProtocolError(f"{where}: expected true or false, got {_kind(data)}")
        return data
    if annotation is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise ProtocolError(f"{where}: expected an integer, got {_kind(data)}")
        return data
    if annotation is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise ProtocolError(f"{where}: expected a number, got {_kind(data)}")
        try:
            return float(data)
        except OverflowError:
            raise ProtocolError(f"{where}: a number beyond the range of a float") from None
    if annotation is str:
        if not isinstance(data, str):
            raise ProtocolError(f"{where}: expected a string, got {_kind(data)}")
        return data
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: expected an object, got {_kind(data)}")
        reader = _READERS.get(annotation)
        if reader is not None:
            try:
                return reader(data)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ProtocolError(f"{where}: not a valid {annotation.__name__} ({type(exc).__name__}: {exc})") from None
        return _fields(annotation, data, where)
    raise ProtocolError(f"{where}: cannot read values of type {annotation!r}")  # a bug in a message class


def _kind(data: Any) -> str:
    return "null" if data is None else type(data).__name__.replace("dict", "object").replace("list", "list")


def _fields(cls: type[T], data: Mapping[str, Any], where: str, binary: bytes = b"") -> T:
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known - {"type"})
    if unknown:
        raise ProtocolError(f"{where}: unknown field {shown(repr(unknown[0]), ECHO_LIMIT)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        annotation = hints[f.name]
        if annotation is bytes:
            values[f.name] = binary
            continue
        if f.name in data:
            values[f.name] = from_json(annotation, data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {f.name!r}")
    return cls(**values)


# Types with their own JSON reader (they check their own structure).
_READERS: dict[type[Any], Callable[[Mapping[str, Any]], Any]] = {
    SimilarityResult: SimilarityResult.from_json,
}


def encode(message: Any) -> bytes:
    """A request or an event as one frame."""
    binary_name = _binary_field(type(message))
    binary = getattr(message, binary_name) if binary_name else b""
    payload = json.dumps({"type": message.TYPE, **to_json(message)}, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False).encode()
    if len(payload) > MAX_JSON or len(binary) > MAX_BINARY:
        raise FrameTooLarge(len(payload), len(binary))
    return HEADER.pack(MAGIC, len(payload), len(binary)) + payload + binary


def decode(message: Mapping[str, Any], binary: bytes, kinds: Mapping[str, type[T]], what: str = "message") -> T:
    """One parsed frame as the message class its "type" names among `kinds` (`what` they are, for errors)."""
    kind = message.get("type")
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        raise ProtocolError(f"unknown {what} type {shown(repr(kind), ECHO_LIMIT)} (known: {', '.join(kinds)})")
    if binary and _binary_field(cls) is None:
        raise ProtocolError(f"{kind}: carries {len(binary)} bytes of binary, but takes none")
    return _fields(cls, message, kind, binary)


def decode_request(message: Mapping[str, Any], binary: bytes = b"") -> Request:
    return typing.cast(Request, decode(message, binary, REQUESTS, "request"))


def decode_event(message: Mapping[str, Any], binary: bytes = b"") -> EngineEvent:
    return typing.cast(EngineEvent, decode(message, binary, EVENTS, "event"))


# ------------------------------------------------------------------------------------------ framing

FRAME_SECONDS = 3.0  # FrameReader: a frame's bytes must all arrive within this long of its first byte
_CHUNK = 1 << 16
# A frame boundary: MAGIC and the first byte of a sane JSON length, which is 0 (MAX_JSON < 2**24). A JSON
# text never holds a raw NUL byte, so this inside a frame's JSON means the frame was cut short and the
# next frame has begun.
_BOUNDARY = MAGIC + b"\x00"


class IncompleteFrame(ProtocolError):
    """A frame whose bytes stopped coming: cut short, or a peer that stalled mid-frame."""


def parse_header(header: bytes, max_json: int = MAX_JSON, max_binary: int = MAX_BINARY) -> tuple[int, int]:
    magic, json_len, bin_len = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame header {header[:4]!r} (expected {MAGIC!r}): not a dit-explore peer?")
    if json_len > max_json or bin_len > max_binary:
        raise FrameTooLarge(json_len, bin_len, max_json, max_binary)
    return json_len, bin_len


def parse_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or an integer over Python's digit limit
        raise ProtocolError(f"malformed JSON in frame: {type(exc).__name__}: {shown(exc)}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message


class FrameReader:
    """Blocking frame reader (the engine side), over a binary stream such as stdin.

    Whatever arrives, it reports each problem at once (by raising ProtocolError from `read_frame`) and
    never consumes a following frame silently: after any bad frame — a bad header, a header over the
    limits (refused as it arrives: its declared bytes are not waited for), malformed JSON — the next
    `read_frame` scans on from the bad frame's second byte for the next MAGIC. A frame cut short and
    followed by the next frame is noticed as soon as that frame's header shows inside its JSON (a JSON
    text holds no raw NUL byte), and a frame whose bytes stop coming is IncompleteFrame after
    `frame_seconds` (when the stream has a file descriptor to wait on with select; a stream without one,
    such as io.BytesIO, is read as it is).
    """

    def __init__(self, raw: IO[bytes], *, max_json: int = MAX_JSON, max_binary: int = MAX_BINARY,
                 frame_seconds: float = FRAME_SECONDS) -> None:
        self._raw = raw
        self._fd: int | None
        try:
            self._fd = raw.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None
        self._pending = bytearray()
        self._resyncing = False
        self.max_json, self.max_binary = max_json, max_binary
        self.frame_seconds = frame_seconds

    def _fill(self, deadline: float | None) -> bool:
        """Read what the stream has (at least one byte) into the pending bytes; False at its end.
        TimeoutError when nothing came before `deadline` (time.monotonic())."""
        if self._fd is not None:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    ready, _, _ = select.select([self._fd], [], [], timeout)
                except InterruptedError:
                    continue
                if not ready:
                    raise TimeoutError
                chunk = os.read(self._fd, _CHUNK)
                break
        else:
            read1 = getattr(self._raw, "read1", None)
            chunk = read1(_CHUNK) if read1 is not None else self._raw.read(_CHUNK)
        if not chunk:
            return False
        self._pending += chunk
        return True

    def _need(self, n: int, deadline: float | None, json_end: int = 0) -> bool:
        """Wait until `n` bytes are pending; False at the end of the stream. ProtocolError when a frame
        boundary shows before `json_end` (after the frame's first byte): the frame was cut short."""
        searched = 1
        while True:
            if json_end:
                at = self._pending.find(_BOUNDARY, searched, json_end + len(_BOUNDARY) - 1)
                if at >= 0:
                    raise ProtocolError(f"frame cut short: the next frame began {at} bytes into it "
                                        f"(it declared {n})")
                searched = max(searched, min(json_end, len(self._pending) - len(_BOUNDARY) + 1))
            if len(self._pending) >= n:
                return True
            if not self._fill(deadline):
                return False

    def _scan(self) -> bool:
        """Drop pending bytes up to the next MAGIC, reading on as needed; False at the end of the stream."""
        while True:
            at = self._pending.find(MAGIC)
            if at >= 0:
                del self._pending[:at]
                self._resyncing = False
                return True
            del self._pending[: max(0, len(self._pending) - (len(MAGIC) - 1))]
            if not self._fill(None):
                return False

    def read_frame(self) -> tuple[dict[str, Any], bytes] | None:
        """One frame as (message, binary); None at the end of the stream. ProtocolError (at once) for
        a bad frame; the next call goes on with the frame after it."""
        if self._resyncing and not self._scan():
            return None
        if not self._pending and not self._fill(None):
            return None
        deadline = time.monotonic() + self.frame_seconds if self._fd is not None else None
        try:
            if not self._need(HEADER.size, deadline):
                raise EOFError
            json_len, bin_len = parse_header(bytes(self._pending[: HEADER.size]), self.max_json, self.max_binary)
            end = HEADER.size + json_len
            if not self._need(end + bin_len, deadline, json_end=end):
                raise EOFError
            message = parse_payload(bytes(self._pending[HEADER.size : end]))
        except (TimeoutError, EOFError) as exc:
            got = len(self._pending)
            self._resync_after_bad_frame()
            raise IncompleteFrame(f"incomplete frame: {got} bytes came within {self.frame_seconds:g} s, then nothing"
                                  if isinstance(exc, TimeoutError) else
                                  f"incomplete frame: the input ended {got} bytes into it") from None
        except ProtocolError:
            self._resync_after_bad_frame()
            raise
        binary = bytes(self._pending[end : end + bin_len])
        del self._pending[: end + bin_len]
        return message, binary

    def _resync_after_bad_frame(self) -> None:
        del self._pending[:1]  # the bad frame's first byte: the scan finds the next MAGIC after it
        self._resyncing = True


# ------------------------------------------------------------------------------------ documentation


def _type_words(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_words(a) for a in options) + " or null"
    if origin is tuple:
        return f"list of {_type_words(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"object of {_type_words(typing.get_args(annotation)[1])}"
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return "word"
    names = {bool: "bool", int: "int", float: "number", str: "string", bytes: "binary"}
    if annotation in names:
        return names[annotation]
    return "object"


def _table(classes: Mapping[str, type[Any]]) -> list[str]:
    lines = ["| type | fields | meaning |", "|---|---|---|"]
    for kind, cls in classes.items():
        hints = _hints(cls)
        parts = []
        for f in dataclasses.fields(cls):
            default = "" if f.default is dataclasses.MISSING else f", default {_default_words(f.default)}"
            parts.append(f"`{f.name}` ({_type_words(hints[f.name])}{default}): {f.metadata.get('doc', '')}")
        meaning = " ".join((cls.__doc__ or "").split()) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        lines.append(f"| `{kind}` | {'<br>'.join(parts) or '—'} | {meaning or '—'} |")
    return lines


def _default_words(value: Any) -> str:
    if isinstance(value, bytes):
        return "empty"
    if dataclasses.is_dataclass(value):
        return "{}" if not any(v is not None for v in to_json(value).values()) else json.dumps(to_json(value))
    return json.dumps(to_json(value))


def markdown_tables() -> str:
    """The message tables of docs/protocol.md, generated from the classes above."""
    sections = [("Requests (client to engine)", REQUESTS), ("Events (engine to client)", EVENTS),
                ("Client-side events (made by the client)", CLIENT_EVENTS)]
    out = []
    for title, classes in sections:
        out += [f"### {title}", "", *_table(classes), ""]
    words = [("Status", Status), ("EngineState", EngineState), ("Role", Role)]
    out += ["### Words", ""]
    out += [f"- `{name}`: " + ", ".join(f"`{m.value}`" for m in enum) for name, enum in words]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # `python -m dit_explore.engine.core.protocol`: the tables of docs/protocol.md
    print(markdown_tables(), end="")
