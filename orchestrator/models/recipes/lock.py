"""A recipe's lock, `FILE.lock` beside it: the model revision (a commit hash) and the
versions that ran it (vLLM, Ray, torch, NCCL, and the image digest in a container:
SPARK_VLLM_IMAGE_DIGEST, set by whoever starts it, as the digest cannot be read inside).

Pure: the lock is a value, written and read as JSON; `drift` compares it with what
would run now and names every difference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from ...errors import RecipeError

LOCK_VERSION = 1
PINNED = ("vllm", "ray", "torch", "nccl")  # of versions.local_report()


@dataclass(frozen=True)
class Lock:
    recipe: str
    model: str
    revision: str | None  # the commit; None for a local folder
    versions: Mapping[str, str | None] = field(default_factory=dict)
    image: str | None = None

    def to_text(self) -> str:
        return json.dumps({"lock_version": LOCK_VERSION, **asdict(self), "versions": dict(self.versions)},
                          indent=2) + "\n"


def lock_path(recipe_file: str | Path) -> Path:
    return Path(str(recipe_file) + ".lock")


def make_lock(recipe: str, model: str, revision: str | None, report: Mapping[str, str | None],
              image: str | None) -> Lock:
    return Lock(recipe, model, revision, {k: report.get(k) for k in PINNED}, image or None)


def parse_lock(text: str, source: str = "<lock>") -> Lock:
    try:
        data = json.loads(text)
        if data.get("lock_version") != LOCK_VERSION:
            raise ValueError(f"lock_version {data.get('lock_version')!r}")
        return Lock(str(data["recipe"]), str(data["model"]), data.get("revision"),
                    dict(data.get("versions") or {}), data.get("image"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecipeError(f"lock {source} cannot be read: {exc}",
                          "write it again: spark-vllm recipe lock RECIPE") from None


def drift(lock: Lock, model: str, revision: str | None, report: Mapping[str, str | None],
          image: str | None) -> list[str]:
    """Each difference between the lock and what would run, `what: locked -> now`."""
    found = []
    if model != lock.model:
        found.append(f"model: {lock.model} -> {model}")
    if lock.revision and revision != lock.revision:
        found.append(f"revision: {lock.revision[:12]} -> {(revision or 'none')[:12]}")
    for name in PINNED:
        if name in lock.versions and lock.versions[name] != report.get(name):
            found.append(f"{name}: {lock.versions[name]} -> {report.get(name)}")
    if (lock.image or image) and lock.image != (image or None):
        found.append(f"image: {lock.image or 'none'} -> {image or 'none'}")
    return found
