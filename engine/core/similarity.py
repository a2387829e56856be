"""Similarity results: grouping blocks by their activation cosine matrix, the result file, its cache.

The matrix itself is measured by engine/analysis.py (torch). Everything here is torch-free (numpy), so
the TUI and the `plans --from-groups` command can read and group results without loading a model.

Grouping is an optimal contiguous segmentation: blocks [a, b] form a group with score
sum over i, j in [a, b] of (S_ij - tau), and the segmentation maximizing the total is found by dynamic
programming over segment boundaries. tau, the similarity above which two blocks "belong together", is
halfway between the mean similarity of neighbouring blocks and the mean similarity of all pairs, so
the grouping adapts to each model's overall level; a group pays tau for each pair it holds, which is the
per-group penalty that keeps dissimilar blocks apart.
With K given, the best segmentation into exactly K groups is returned; otherwise the K with the best
score (ties go to fewer groups, so a uniform matrix is one group).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dit_explore.engine.core.plan import span_text
from dit_explore.engine.core.text import shown
from dit_explore.engine.core.userfiles import finite_number, read_user_text

SIMILARITY_JSON = "similarity.json"
SIMILARITY_PNG = "similarity.png"
RESULT_FORMAT = 1
MAX_RESULT_BYTES = 16 << 20  # a similarity.json or cache file (a 100-block model's is about 0.3 MB)
MAX_RESULT_BLOCKS = 1000  # blocks of one result, all stacks together (grouping is cubic in them)


class ResultError(ValueError):
    """A file that is not a similarity result (not JSON, nested too deeply, the wrong shape): one line."""

# Five varied prompts for the default analysis: subjects, styles and compositions differ, so the
# average over them is not the fingerprint of one image.
DEFAULT_PROMPTS = (
    "a close-up photograph of a red fox in fresh snow, soft morning light",
    "an isometric illustration of a busy city street market, flat colors",
    "a watercolor painting of a lighthouse on a cliff during a storm",
    "a macro photo of a dew-covered spider web against a dark green background",
    "a minimalist poster with the word TRANSFORMER in bold geometric letters",
)


def _segment_sums(matrix: np.ndarray) -> np.ndarray:
    """2-D prefix sums, so any square block's sum is four lookups."""
    n = matrix.shape[0]
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = np.cumsum(np.cumsum(matrix, axis=0), axis=1)
    return prefix


def group_blocks(matrix: Sequence[Sequence[float]] | np.ndarray, groups: int | None = None) -> list[tuple[int, int]]:
    """Contiguous, inclusive, ordered groups covering every block once (see the module docstring)."""
    s = np.asarray(matrix, dtype=np.float64)
    n = s.shape[0]
    if s.ndim != 2 or s.shape[1] != n:
        raise ValueError(f"a similarity matrix must be square, got shape {s.shape}")
    if n == 0:
        return []
    if groups is not None and not 1 <= groups <= n:
        raise ValueError(f"groups must be between 1 and {n} (the number of blocks), got {groups}")
    s = (s + s.T) / 2
    off = s[~np.eye(n, dtype=bool)]
    tau = float((off.mean() + np.diag(s, 1).mean()) / 2) if off.size else 0.0  # neighbours vs all pairs
    prefix = _segment_sums(s - tau)

    def score(a: int, b: int) -> float:  # blocks a..b inclusive
        return prefix[b + 1, b + 1] - prefix[a, b + 1] - prefix[b + 1, a] + prefix[a, a]

    k_max = groups or n
    # best[k][j]: the best score of blocks 0..j-1 in k groups; cut[k][j]: where its last group starts.
    best = np.full((k_max + 1, n + 1), -np.inf)
    cut = np.zeros((k_max + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, k_max + 1):
        for j in range(k, n + 1):
            candidates = [best[k - 1, i] + score(i, j - 1) for i in range(k - 1, j)]
            i = int(np.argmax(candidates))
            best[k, j], cut[k, j] = candidates[i], i + k - 1
    if groups is None:
        scale = max(1.0, float(np.abs(s).sum()))
        top = best[1:, n].max()
        groups = 1 + int(np.flatnonzero(best[1:, n] >= top - 1e-9 * scale)[0])
    out: list[tuple[int, int]] = []
    j = n
    for k in range(groups, 0, -1):
        i = int(cut[k, j])
        out.append((i, j - 1))
        j = i
    return out[::-1]


def group_names(count: int) -> list[str]:
    """"first", "middle 1" .. "middle k", "last" (one group is just "first")."""
    if count <= 1:
        return ["first"][:count]
    return ["first", *[f"middle {i}" for i in range(1, count - 1)], "last"]


def group_labels(groups: Sequence[tuple[int, int]]) -> list[str]:
    """Each group as its name and range: "first 0", "middle 1 1-9", "last 10-11". The one way groups
    are written, in the TUI, the CLI, plan comments and similarity.png."""
    return [f"{name} {span_text(a, b)}" for name, (a, b) in zip(group_names(len(groups)), groups)]


@dataclass
class StackResult:
    blocks: int
    matrix: list[list[float]]
    groups: list[tuple[int, int]]


@dataclass
class SimilarityResult:
    """What `analyze` measures, as written to similarity.json."""

    model: str
    stacks: dict[str, StackResult]
    order: list[tuple[str, int]]  # every block in execution order
    matrix: list[list[float]]  # over `order`
    groups: list[tuple[int, int]]  # over `order`
    prompts: list[str]
    steps: int
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    key: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "model": self.model,
            "stacks": {name: {"blocks": s.blocks, "matrix": s.matrix, "groups": [list(g) for g in s.groups]}
                       for name, s in self.stacks.items()},
            "all": {"order": [list(o) for o in self.order], "matrix": self.matrix,
                    "groups": [list(g) for g in self.groups]},
            "prompts": list(self.prompts),
            "steps": self.steps,
            "seed": self.seed,
            "settings": self.settings,
            "key": self.key,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimilarityResult:
        """The result of a parsed similarity.json; ResultError (one line) for anything else: a missing
        key, a wrong type, a matrix that is not square over its blocks, a group outside them."""
        if not isinstance(data, Mapping):
            raise ResultError(f"expected a JSON object, got {type(data).__name__}")
        try:
            result = cls._from_json(data)
        except KeyError as exc:
            raise ResultError(f"no '{shown(exc.args[0] if exc.args else exc)}' in it") from None
        except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            if isinstance(exc, ResultError):
                raise
            raise ResultError(f"the wrong shape ({type(exc).__name__}: {shown(exc)})") from None
        result._check()
        return result

    def _check(self) -> None:
        if len(self.order) > MAX_RESULT_BLOCKS:
            raise ResultError(f"all.order: {len(self.order)} blocks (at most {MAX_RESULT_BLOCKS})")
        if sum(s.blocks for s in self.stacks.values()) != len(self.order):
            raise ResultError("all.order: not every block of the stacks once")
        for where, blocks, matrix, groups in [
            *((f"stacks.{shown(name)}", s.blocks, s.matrix, s.groups) for name, s in self.stacks.items()),
            ("all", len(self.order), self.matrix, self.groups),
        ]:
            if blocks < 1:
                raise ResultError(f"{where}.blocks: must be at least 1, got {blocks}")
            if not (isinstance(matrix, list) and len(matrix) == blocks and all(
                    isinstance(row, list) and len(row) == blocks and all(
                        finite_number(x) for x in row)
                    for row in matrix)):
                raise ResultError(f"{where}.matrix: not {blocks} x {blocks} finite numbers")
            if not all(0 <= a <= b < blocks for a, b in groups):
                raise ResultError(f"{where}.groups: a group outside blocks 0-{blocks - 1}")

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> SimilarityResult:
        stacks = {name: StackResult(int(s["blocks"]), s["matrix"], [(int(g[0]), int(g[1])) for g in s["groups"]])
                  for name, s in data["stacks"].items()}
        return cls(
            model=str(data["model"]),
            stacks=stacks,
            order=[(str(a), int(b)) for a, b in data["all"]["order"]],
            matrix=data["all"]["matrix"],
            groups=[(int(g[0]), int(g[1])) for g in data["all"]["groups"]],
            prompts=list(data["prompts"]),
            steps=int(data["steps"]),
            seed=int(data["seed"]),
            settings=dict(data.get("settings", {})),
            key=dict(data.get("key", {})),
        )

    def stack_groups(self) -> dict[str, list[tuple[int, int]]]:
        return {name: list(s.groups) for name, s in self.stacks.items()}

    def regroup(self, groups: int | None) -> SimilarityResult:
        """The same matrices grouped again (e.g. with a fixed number of groups per stack)."""
        stacks = {name: StackResult(s.blocks, s.matrix, group_blocks(s.matrix, min(groups, s.blocks) if groups else None))
                  for name, s in self.stacks.items()}
        total = len(self.order)
        return SimilarityResult(self.model, stacks, self.order, self.matrix,
                                group_blocks(self.matrix, min(groups, total) if groups else None),
                                self.prompts, self.steps, self.seed, self.settings, self.key)


def cache_key(*, model: str, revision: str, prompts: Sequence[str], steps: int, width: int, height: int,
              seed: int, dtype: str, guidance: float) -> dict[str, Any]:
    """Everything that changes the measured matrix; its hash names the cache file."""
    return {"model": model, "revision": revision, "prompts": list(prompts), "steps": steps, "width": width,
            "height": height, "seed": seed, "dtype": dtype, "guidance": guidance, "format": RESULT_FORMAT}


def cache_path(cache_root: Path, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root / "similarity" / f"{digest}.json"


def load_cached(cache_root: Path, key: Mapping[str, Any]) -> SimilarityResult | None:
    """The cached result for `key`, or None: a missing, unreadable, corrupt or foreign cache file is a
    miss (measured again and overwritten), never an error."""
    return load_result_for(cache_path(cache_root, key), key)


def load_result_for(path: Path, key: Mapping[str, Any]) -> SimilarityResult | None:
    """The result in the file at `path` when it is the analysis `key` names (same model revision, prompts,
    settings, dtype), else None — a missing, unreadable or corrupt file included."""
    try:
        data = _parse(read_user_text(path, limit=MAX_RESULT_BYTES, kind="similarity results"))
    except ValueError:  # UserFileError, ResultError
        return None
    if not isinstance(data, dict) or data.get("key") != dict(key):
        return None  # a hash collision or a stale format: measure again
    try:
        return SimilarityResult.from_json(data)
    except ValueError:
        return None


def store_cached(cache_root: Path, result: SimilarityResult) -> Path:
    from dit_explore.engine.core.runs import write_atomic  # a fresh temp file (mkstemp), removed on failure

    path = cache_path(cache_root, result.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result.to_json()).encode())
    return path


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ResultError("not a similarity result: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or a number over Python's 4300-digit limit
        raise ResultError(f"not JSON ({shown(exc)})") from None


def read_result(folder_or_file: Path) -> SimilarityResult:
    """An analyze output folder's similarity.json (or that file). Every failure is a ValueError of one
    line: UserFileError (missing, not a regular file, too large, not UTF-8) naming the file, or
    ResultError (not JSON, not the shape analyze writes) saying what is wrong."""
    path = folder_or_file / SIMILARITY_JSON if folder_or_file.is_dir() else folder_or_file
    return SimilarityResult.from_json(_parse(read_user_text(path, limit=MAX_RESULT_BYTES,
                                                            kind="similarity results")))
