"""Where a model's weights and config come from: a local folder, or a Hub repository
(whose file list and sizes the head reads before Ray starts, so that a gated or
unknown model fails in a second)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFound
from .hub import HubAccess, RepoPlan, cached_snapshot, hub_error, node_token, plan_repo
from .memory import local_weights_bytes


@dataclass(frozen=True)
class ModelSource:
    model: str
    folder: Path | None = None  # a local model folder
    repo: RepoPlan | None = None  # a Hub repository
    revision: str | None = None  # a pinned commit (a recipe's lock), else `main`

    @property
    def weights_bytes(self) -> int:
        return self.repo.weights_bytes if self.repo else local_weights_bytes(self.folder)


def locate(model: str, local: bool, access: HubAccess, revision: str | None = None) -> ModelSource:
    """`local`: `model` is a path (engine.check_model decided); else ask the Hub."""
    if local:
        return ModelSource(model, folder=Path(model))
    return ModelSource(model, repo=plan_repo(model, access, node_token(), revision), revision=revision)


def load_config(source: ModelSource, access: HubAccess) -> dict:
    """config.json: from the folder, the cache, or (one small file) the Hub."""
    if source.folder is not None:
        path = source.folder / "config.json"
    else:
        snapshot = cached_snapshot(source.model, access, source.revision)
        path = snapshot / "config.json" if snapshot else None
        if path is None:
            from huggingface_hub import hf_hub_download

            try:
                path = Path(hf_hub_download(source.model, "config.json", revision=source.revision,
                                            cache_dir=access.cache_dir, endpoint=access.endpoint,
                                            token=node_token()))
            except Exception as exc:
                raise hub_error(exc, source.model, node_token() is not None) from None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read {path}: {exc}", "is it a model folder?") from None
