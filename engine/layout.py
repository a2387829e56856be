"""What a model's block stacks look like: names, sizes, and the one structural rule (SD3's last block).

Torch-free, so the TUI can draw the layer grid from a config file before any weights load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FAMILIES = ("flux", "sd3", "auraflow")


@dataclass(frozen=True)
class Stack:
    """One `nn.ModuleList` of transformer blocks, addressed in plans by `name`."""

    name: str  # "double" or "single": the plan-file key
    attr: str  # attribute of the transformer holding the ModuleList
    blocks: int
    # SD3's last block is "context pre-only": it returns no text stream, so it can only end a stack.
    pre_only_last: bool = False

    @property
    def last(self) -> int:
        return self.blocks - 1


@dataclass(frozen=True)
class Layout:
    family: str
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


def layout_from_config(family: str, config: Mapping[str, Any]) -> Layout:
    """The stacks of a transformer, read from its `config.json` (diffusers' constructor defaults apply)."""
    if family == "flux":
        return Layout(
            "flux",
            (
                Stack("double", "transformer_blocks", int(config.get("num_layers", 19))),
                Stack("single", "single_transformer_blocks", int(config.get("num_single_layers", 38))),
            ),
        )
    if family == "sd3":
        # SD3Transformer2DModel builds block i with context_pre_only=(i == num_layers - 1).
        return Layout("sd3", (Stack("double", "transformer_blocks", int(config.get("num_layers", 18)), True),))
    if family == "auraflow":
        return Layout(
            "auraflow",
            (
                Stack("double", "joint_transformer_blocks", int(config.get("num_mmdit_layers", 4))),
                Stack("single", "single_transformer_blocks", int(config.get("num_single_dit_layers", 32))),
            ),
        )
    raise ValueError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
