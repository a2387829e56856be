"""Turn a MODEL argument into what we know about it before loading any weights.

MODEL is an alias (`flux-schnell`, `tiny-flux`, ...), a local diffusers folder, or a Hugging Face repo
id. Resolution reads only small JSON files (shipped configs, model_index.json, transformer/config.json),
so plans can be validated, sizes checked and the layer grid drawn while a 12B model is still loading.

Torch-free.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_explore.engine.core.catalog import MODELS, ModelSpec, spec_for_repo, toy_folder
from dit_explore.engine.core.families import Defaults, Family, FamilyError, all_families, family, family_for_pipeline
from dit_explore.engine.core.layout import Layout

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelError(ValueError):
    """The MODEL argument cannot be used; the message is one line saying what to do."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user typed, for display and run.json
    kind: str  # "tiny" | "toy" (a trained folder shipped in the package) | "alias" | "repo" | "local"
    family: str
    location: str  # tiny name, repo id or folder path
    layout: Layout
    defaults: Defaults
    transformer_config: Mapping[str, Any]
    vae_config: Mapping[str, Any]
    scheduler_config: Mapping[str, Any]

    @property
    def family_info(self) -> Family:
        """The model family object: everything that differs between families (engine/core/families/)."""
        return family(self.family)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: VAE downsampling times the patch size."""
        return self.family_info.size_multiple(self.transformer_config, self.vae_config)

    @property
    def max_side(self) -> int | None:
        """Largest width or height the positional embedding covers; None if unbounded."""
        return self.family_info.max_side(self.transformer_config, self.vae_config)

    def size_problem(self, label: str, value: int) -> str | None:
        """Why `value` cannot be the width or height (`label`), or None."""
        m = self.size_multiple
        if value % m:
            return (f"{label} {value} is not a multiple of {m} ({self.name} works on {m}-pixel patches); "
                    f"try {max(m, round(value / m) * m)}")
        if self.max_side is not None and value > self.max_side:
            return f"{label} {value} is larger than {self.name} supports ({self.max_side})"
        return None

    def check_size(self, width: int, height: int) -> None:
        for label, value in (("width", width), ("height", height)):
            problem = self.size_problem(label, value)
            if problem is not None:
                raise ModelError(problem)


def resolve(model: str) -> ModelSource:
    """What MODEL names, from shipped or small local/hub JSON files; raises ModelError."""
    spec = MODELS.get(model)
    if spec is not None:
        return _from_spec(model, spec)
    path = Path(model).expanduser()
    if path.is_dir():
        return _from_folder(model, path)
    if _REPO_ID.match(model) and not path.exists():
        known = spec_for_repo(model)
        if known is not None:
            return _from_spec(model, known)
        return _from_hub(model)
    raise ModelError(
        f"unknown model '{model}': not an alias (see `dit-explore models`), a local diffusers folder "
        f"(with model_index.json), or a Hugging Face repo id (owner/name)"
    )


def _from_spec(name: str, spec: ModelSpec) -> ModelSource:
    try:
        layout = spec.layout
    except FamilyError as exc:
        raise ModelError(f"{name}: {exc}") from None
    return ModelSource(
        name=name,
        kind="toy" if spec.toy else "tiny" if spec.tiny else "alias",
        family=spec.family,
        location=str(toy_folder(spec.alias)) if spec.toy else spec.alias if spec.tiny else str(spec.repo),
        layout=layout,
        defaults=spec.defaults,
        transformer_config=spec.transformer,
        vae_config=spec.vae,
        scheduler_config=spec.scheduler,
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: no {path.name} ({what}); is this a diffusers folder?") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} is not a JSON object")
    return data


def _family(index: Mapping[str, Any], where: str) -> Family:
    cls = index.get("_class_name")
    found = family_for_pipeline(str(cls))
    if found is None:
        supported = ", ".join(f.pipeline_class for f in all_families().values())
        raise ModelError(f"{where}: unsupported pipeline {cls!r}; dit-explore supports {supported}")
    return found


def _from_folder(name: str, root: Path) -> ModelSource:
    index = _read_json(root / "model_index.json", "the pipeline index")
    found = _family(index, str(root))
    transformer = _read_json(root / "transformer" / "config.json", "the transformer config")
    vae = _read_json(root / "vae" / "config.json", "the VAE config")
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_path, "the scheduler config") if scheduler_path.exists() else {}
    return ModelSource(
        name=name,
        kind="local",
        family=found.name,
        location=str(root.resolve()),
        layout=found.layout(transformer),
        defaults=found.defaults,
        transformer_config=transformer,
        vae_config=vae,
        scheduler_config=scheduler,
    )


def _from_hub(repo: str) -> ModelSource:
    """Read the repo's small config files from the local Hugging Face cache, downloading them if needed."""
    files = {}
    for key, filename in (
        ("index", "model_index.json"),
        ("transformer", "transformer/config.json"),
        ("vae", "vae/config.json"),
    ):
        files[key] = _hub_json(repo, filename)
    found = _family(files["index"], repo)
    return ModelSource(
        name=repo,
        kind="repo",
        family=found.name,
        location=repo,
        layout=found.layout(files["transformer"]),
        defaults=found.defaults,
        transformer_config=files["transformer"],
        vae_config=files["vae"],
        scheduler_config={},
    )


def _hub_json(repo: str, filename: str) -> dict[str, Any]:
    """A small file of a hub repo: from the local cache if there, else downloaded (a few KB)."""
    import logging

    from huggingface_hub import hf_hub_download  # light, but only needed for hub repos
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # retries would print warnings
    try:
        try:
            path = hf_hub_download(repo, filename, local_files_only=True)
        except LocalEntryNotFoundError:
            path = hf_hub_download(repo, filename)
    except GatedRepoError:
        raise ModelError(f"{repo} is gated: accept its license on huggingface.co, then `hf auth login`") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{repo}: no such Hugging Face repo (or it is private: `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - offline, proxy, missing file: all end the same way for the user
        raise ModelError(
            f"{repo}: cannot fetch {filename} ({type(exc).__name__}); download the model with "
            f"`hf download {repo}`, or use an alias with --random-weights"
        ) from None
    return _read_json(Path(path), filename)


def cache_dir() -> Path:
    """Where dit-explore keeps built tiny models and analysis results (DIT_EXPLORE_CACHE overrides)."""
    override = os.environ.get("DIT_EXPLORE_CACHE")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dit-explore"))
