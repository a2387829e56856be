"""The model families dit-explore knows, one module each in this folder.

Every module here except `base` defines `FAMILY`, an instance of a `base.Family` subclass; the registry
finds them by listing the folder, so adding a family is one new file (plus its catalog entries in
engine/core/catalog.py). `register` adds one from elsewhere (a plugin, a test). Everything else asks
`family(name)`, which raises FamilyError for a name no file declares: no code path ever falls through to
another family's behaviour.
"""

from __future__ import annotations

import importlib
import pkgutil

from dit_explore.engine.core.families.base import (
    BlockIO,
    BlockLayoutError,
    Defaults,
    EmbeddingShape,
    Family,
    FamilyError,
    MemorySpec,
    StackSpec,
    TextEncoderShape,
    TextEncoderSpec,
    TinySpec,
    ToySpec,
)

__all__ = ["BlockIO", "BlockLayoutError", "Defaults", "EmbeddingShape", "Family", "FamilyError", "MemorySpec", "StackSpec",
           "TextEncoderShape", "TextEncoderSpec", "TinySpec", "ToySpec", "all_families", "family", "family_for_pipeline",
           "register"]

_REGISTRY: dict[str, Family] = {}
_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found = getattr(module, "FAMILY", None)
        if not isinstance(found, Family):
            raise FamilyError(f"{module.__name__} defines no FAMILY (an instance of base.Family)")
        register(found)


def register(new: Family) -> Family:
    """Make a family known by its name (a second family of the same name is an error)."""
    existing = _REGISTRY.get(new.name)
    if existing is not None and existing is not new:
        raise FamilyError(f"two model families are named {new.name!r}")
    _REGISTRY[new.name] = new
    return new


def all_families() -> dict[str, Family]:
    _discover()
    return dict(_REGISTRY)


def family(name: str) -> Family:
    """The family called `name`; FamilyError (one line) if none is."""
    known = all_families()
    found = known.get(name)
    if found is None:
        raise FamilyError(f"unknown model family {name!r} (known: {', '.join(sorted(known))})")
    return found


def family_for_pipeline(class_name: str) -> Family | None:
    """The family whose diffusers pipeline class is `class_name` (model_index.json's "_class_name")."""
    for candidate in all_families().values():
        if candidate.pipeline_class == class_name:
            return candidate
    return None
