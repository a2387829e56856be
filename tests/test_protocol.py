"""The typed wire protocol: every request and event survives its frame unchanged (hypothesis), every
malformed field is refused with its name, and docs/protocol.md's tables are the classes'."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dit_explore.engine.core import protocol
from dit_explore.engine.core.protocol import ProtocolError
from dit_explore.engine.core.similarity import SimilarityResult, StackResult

ROOT = Path(__file__).resolve().parents[1]
ALL = {**protocol.REQUESTS, **protocol.EVENTS, **protocol.CLIENT_EVENTS}


def _similarity() -> st.SearchStrategy[SimilarityResult]:
    """Consistent results: n blocks over one or two stacks, an n x n matrix, contiguous groups."""

    @st.composite
    def build(draw: st.DrawFn) -> SimilarityResult:
        sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
        names = ["double", "single"][: len(sizes)]
        order = [(name, i) for name, size in zip(names, sizes) for i in range(size)]
        n = len(order)
        value = st.floats(-1, 1, allow_nan=False, width=32)
        matrix = [[draw(value) for _ in range(n)] for _ in range(n)]
        stacks, start = {}, 0
        for name, size in zip(names, sizes):
            sub = [row[start : start + size] for row in matrix[start : start + size]]
            stacks[name] = StackResult(size, sub, [(0, size - 1)])
            start += size
        return SimilarityResult(draw(st.text(max_size=8)), stacks, order, matrix, [(0, n - 1)],
                                draw(st.lists(st.text(max_size=8), max_size=3)), draw(st.integers(1, 50)),
                                draw(st.integers(0, 99)), {"seed": 1}, {"model": "m"})

    return build()


def strategy(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of a message field's type, written from the annotations (not from the codec)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return st.one_of([strategy(a) for a in typing.get_args(annotation)])
    if origin is tuple:
        return st.lists(strategy(typing.get_args(annotation)[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), strategy(typing.get_args(annotation)[1]), max_size=3)
    if annotation is type(None):
        return st.none()
    if annotation is SimilarityResult:
        return _similarity()
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if annotation is int:
        return st.integers(-(2**53), 2**53)
    if annotation is bytes:
        return st.binary(max_size=64)
    if dataclasses.is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        return st.builds(annotation, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(annotation)})
    return st.from_type(annotation)


def through_a_frame(message: Any, kinds: dict[str, type[Any]]) -> Any:
    frame = protocol.encode(message)
    json_len, bin_len = protocol.parse_header(frame[: protocol.HEADER.size])
    payload = frame[protocol.HEADER.size : protocol.HEADER.size + json_len]
    binary = frame[protocol.HEADER.size + json_len :]
    assert len(binary) == bin_len
    return protocol.decode(protocol.parse_payload(payload), binary, kinds)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_message_round_trips_through_its_frame(kind: str) -> None:
    cls = ALL[kind]
    kinds = {kind: cls}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(strategy(cls))
    def check(message: Any) -> None:
        assert through_a_frame(message, kinds) == message

    check()


def test_a_frame_carries_the_binary_field_outside_the_json() -> None:
    event = protocol.Progress(job=3, index=0, role=protocol.Role.PLAN, step=1, steps=2, elapsed=0.5,
                              preview=b"\x89PNG fake")
    frame = protocol.encode(event)
    json_len, bin_len = protocol.parse_header(frame[:12])
    assert frame[-bin_len:] == b"\x89PNG fake" and bin_len == 9
    assert json.loads(frame[12 : 12 + json_len]) == {"type": "progress", "job": 3, "index": 0, "role": "plan",
                                                      "step": 1, "steps": 2, "prompts": 1, "elapsed": 0.5,
                                                      "label": None}


BAD = [
    ({"type": "run", "job": "1", "plan": "", "prompts": ["p"]}, "run.job: expected an integer, got str"),
    ({"type": "run", "job": True, "plan": "", "prompts": ["p"]}, "run.job: expected an integer, got bool"),
    ({"type": "run", "job": 1, "plan": "", "prompts": "p"}, "run.prompts: expected a list, got str"),
    ({"type": "run", "job": 1, "plan": "", "prompts": [1]}, "run.prompts[0]: expected a string, got int"),
    ({"type": "run", "job": 1, "plan": ""}, "run: missing field 'prompts'"),
    ({"type": "run", "job": 1, "plan": "", "prompts": [], "color": 1}, "run: unknown field 'color'"),
    ({"type": "run", "job": 1, "plan": "", "prompts": [], "sampling": {"steps": "4"}},
     "run.sampling.steps: expected an integer, got str"),
    ({"type": "cancel", "job": 1.5}, "cancel.job: expected an integer, got float"),
    ({"type": "ping"}, "ping: missing field 'id'"),
    ({"type": "launch"}, "unknown request type 'launch'"),
]


@pytest.mark.parametrize(("message", "problem"), BAD)
def test_malformed_requests_are_refused_naming_the_field(message: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(message)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_words_outside_their_enum_and_unexpected_binary_are_refused() -> None:
    done = {"type": "done", "job": 1, "status": "fine"}
    with pytest.raises(ProtocolError, match=r"done.status: 'fine' is not one of running, ok, cancelled"):
        protocol.decode_event(done)
    with pytest.raises(ProtocolError, match="ping: carries 3 bytes of binary, but takes none"):
        protocol.decode_request({"type": "ping", "id": 1}, b"abc")


def test_a_client_refuses_an_engine_of_another_protocol_version() -> None:
    from dit_explore.engine.core.resolve import resolve
    from dit_explore.tui.client import EngineClient

    source = resolve("tiny-flux")
    hello = protocol.Hello(protocol=protocol.PROTOCOL_VERSION - 1, model="m", location="l", kind="tiny",
                           family="flux", layout=source.layout, defaults=source.defaults, size_multiple=8,
                           max_side=None, pid=1, log=None, device="cpu", dtype=None, random_weights=False)
    with pytest.raises(ProtocolError, match=f"speaks protocol {protocol.PROTOCOL_VERSION - 1}"):
        EngineClient("tiny-flux")._deliver(hello)


def test_the_documentation_tables_are_generated_from_the_classes() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    start = "<!-- generated from engine/core/protocol.py: do not edit by hand -->\n"
    end = "<!-- end of generated tables -->"
    assert start in doc and end in doc
    generated = doc[doc.index(start) + len(start) : doc.index(end)]
    assert generated.strip() == protocol.markdown_tables().strip(), (
        "docs/protocol.md is out of date: paste `python -m dit_explore.engine.core.protocol` between the markers")
    assert f"version {protocol.PROTOCOL_VERSION}" in doc.splitlines()[0]
    for kind in ALL:  # and every message is in it
        assert f"| `{kind}` |" in generated


# ------------------------------------------------------------------------------------------ framing


def ping_frame(ident: int) -> bytes:
    return protocol.encode(protocol.Ping(id=ident))


def raw_frame(payload: bytes, binary: bytes = b"") -> bytes:
    return protocol.HEADER.pack(protocol.MAGIC, len(payload), len(binary)) + payload + binary


def outcomes(reader: protocol.FrameReader, limit: int = 50) -> list[Any]:
    """What read_frame gives until the end of the stream: each message, or the ProtocolError's class."""
    out: list[Any] = []
    for _ in range(limit):
        try:
            frame = reader.read_frame()
        except ProtocolError as exc:
            out.append(type(exc))
            continue
        if frame is None:
            return out
        out.append(frame[0])
    raise AssertionError(f"no end of stream after {limit} reads: {out}")


def over_bytes(data: bytes, limit: int = 50, **kwargs: Any) -> list[Any]:
    import io

    return outcomes(protocol.FrameReader(io.BytesIO(data), **kwargs), limit)


def pinged(ident: int) -> dict[str, Any]:
    return {"type": "ping", "id": ident}


def test_a_header_over_the_limits_is_refused_without_consuming_what_follows() -> None:
    # A header declaring 2 GiB used to swallow the next 2 GiB (here: the pings and the end of input).
    huge = protocol.HEADER.pack(protocol.MAGIC, 1 << 31, 0)
    assert over_bytes(huge + ping_frame(1) + ping_frame(2)) == [protocol.FrameTooLarge, pinged(1), pinged(2)]
    # Binary over the reader's own limit (the engine takes none): refused the same way, at the header.
    with_binary = raw_frame(b'{"type":"ping","id":3}', b"\x89PNG" * 100)
    assert over_bytes(with_binary + ping_frame(4), max_binary=0) == [protocol.FrameTooLarge, pinged(4)]


def test_a_frame_cut_short_does_not_eat_the_frames_after_it() -> None:
    cut = protocol.HEADER.pack(protocol.MAGIC, 100, 0) + b'{"type": "pi'
    assert over_bytes(cut + ping_frame(1) + ping_frame(2)) == [ProtocolError, pinged(1), pinged(2)]
    # Cut inside its header (the next frame's bytes make its length absurd), and cut at the end of the
    # input: each one error, the frame between them kept.
    assert over_bytes(ping_frame(1)[:7] + ping_frame(2) + ping_frame(3)[:20]) == [
        protocol.FrameTooLarge, pinged(2), protocol.IncompleteFrame]


def test_garbage_and_bad_json_are_each_one_error_and_reading_goes_on() -> None:
    data = (b"\x00\xffnot a frame" + ping_frame(1) + raw_frame(b"{nope") + raw_frame(b"[1]")
            + raw_frame(b'{"type": "ping", "id": ' + b"9" * 5000 + b"}") + raw_frame(b"[" * 100_000 + b"]" * 100_000)
            + raw_frame(b'{"type": "\xff"}') + ping_frame(2))
    assert over_bytes(data) == [ProtocolError, pinged(1)] + [ProtocolError] * 5 + [pinged(2)]


def test_the_payload_errors_are_one_short_line() -> None:
    for payload, fragment in [(b'{"id": ' + b"9" * 5000 + b"}", "ValueError: Exceeds the limit (4300 digits)"),
                              (b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
                              (b'{"a": "\xff"}', "UnicodeDecodeError")]:
        with pytest.raises(ProtocolError) as info:
            protocol.parse_payload(payload)
        assert fragment in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 400


def test_a_frame_whose_bytes_stop_coming_is_reported_and_the_next_frame_read() -> None:
    """Over a pipe (a file descriptor): the reader waits `frame_seconds` for the rest of a frame, then
    says so, and reads the frame that comes later."""
    import os
    import threading

    read_fd, write_fd = os.pipe()
    results: list[Any] = []
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        reader = protocol.FrameReader(stream, frame_seconds=0.2)

        def read(n: int) -> threading.Thread:
            def body() -> None:
                for _ in range(n):
                    try:
                        frame = reader.read_frame()
                        results.append(frame[0] if frame else None)
                    except ProtocolError as exc:
                        results.append(type(exc))

            thread = threading.Thread(target=body, daemon=True)
            thread.start()
            return thread

        os.write(write_fd, ping_frame(1)[:15])  # a header and three bytes of JSON; the rest never comes
        first = read(1)
        first.join(30)  # a hang guard: reporting takes frame_seconds
        assert not first.is_alive() and results == [protocol.IncompleteFrame]
        os.write(write_fd, ping_frame(2))
        second = read(1)
        second.join(30)
        assert results == [protocol.IncompleteFrame, pinged(2)]
        # A 2 GiB header is refused at once: the reader does not wait for the bytes it declares.
        os.write(write_fd, protocol.HEADER.pack(protocol.MAGIC, 1 << 31, 0))
        third = read(1)
        third.join(30)
        assert results[2:] == [protocol.FrameTooLarge]
        os.write(write_fd, ping_frame(3))
        os.close(write_fd)
        fourth = read(2)
        fourth.join(30)
        assert results[3:] == [pinged(3), None]


def _junk() -> st.SearchStrategy[bytes]:
    """Bytes as a confused or hostile peer sends them: random, frame-like, or pieces of real frames."""
    header = st.builds(lambda j, b: protocol.HEADER.pack(protocol.MAGIC, j, b),
                       st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)), st.one_of(st.just(0), st.integers(0, 2**32 - 1)))
    piece = st.one_of(st.binary(max_size=40), header, st.just(protocol.MAGIC),
                      st.integers(1, 40).map(lambda n: ping_frame(7)[:n]), st.just(b'{"type": "ping", "id": 5}'))
    return st.lists(piece, max_size=6).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_junk(), st.integers(0, 2**31))
def test_whatever_comes_before_it_a_frame_is_read(junk: bytes, ident: int) -> None:
    """Any bytes, then a frame, then the end of input: the frame is the last thing read (after the
    engine's reader has reported what came before it), and nothing is read after it."""
    got = over_bytes(junk + ping_frame(ident), max_binary=0, limit=200)
    assert got and got[-1] == pinged(ident)


def test_an_integer_beyond_any_float_is_a_protocol_error() -> None:
    from dit_explore.engine.core.protocol import ProtocolError, decode_request

    with pytest.raises(ProtocolError, match=r"run\.sampling\.guidance: a number beyond the range of a float"):
        decode_request({"type": "run", "job": 1, "plan": "version = 1\n", "prompts": ["p"],
                        "sampling": {"guidance": 10 ** 400}})
