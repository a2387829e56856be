"""What a model's block stacks look like: names, sizes, and the one structural rule (a last block that
returns no text stream, as SD3's). A model family (engine/core/families/) reads a Layout from a
transformer config; the Layout is what plans are validated against and what the TUI draws.

Torch-free, so the TUI can draw the layer grid from a config file before any weights load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stack:
    """One `nn.ModuleList` of transformer blocks, addressed in plans by `name`."""

    name: str  # the plan-file key ("double", "single", ...), declared by the model family
    attr: str  # attribute of the transformer holding the ModuleList
    blocks: int
    # The last block returns no text stream (SD3's "context pre-only" block), so it can only end a stack.
    pre_only_last: bool = False

    @property
    def last(self) -> int:
        return self.blocks - 1


@dataclass(frozen=True)
class Layout:
    family: str  # the name of its model family
    stacks: tuple[Stack, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stacks)

    @property
    def total_blocks(self) -> int:
        return sum(s.blocks for s in self.stacks)

    def stack(self, name: str) -> Stack:
        for s in self.stacks:
            if s.name == name:
                return s
        raise KeyError(name)

    def describe(self) -> str:
        return ", ".join(f"{s.name} {s.blocks}" for s in self.stacks)

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "stacks": [
                {"name": s.name, "attr": s.attr, "blocks": s.blocks, "pre_only_last": s.pre_only_last}
                for s in self.stacks
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        return cls(
            family=str(data["family"]),
            stacks=tuple(
                Stack(str(s["name"]), str(s["attr"]), int(s["blocks"]), bool(s.get("pre_only_last", False)))
                for s in data["stacks"]
            ),
        )
