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
                                                      "step": 1, "steps": 2, "prompts": 1, "elapsed": 0.5}


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
