"""Model folders made once: built in a sibling staging folder, renamed into place.

Shared by the tiny random model and the demo's real model. An interrupted build
never looks complete, a folder that holds something else is never overwritten,
and two makers racing for the same folder both end with the finished one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ...errors import SimulationError

# What save_pretrained writes and vLLM needs; present together means complete.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether `path` holds every file a finished build wrote."""
    root = Path(path)
    return all((root / name).is_file() for name in REQUIRED_FILES)


def build_once(path: str | os.PathLike[str], build: Callable[[Path], None], what: str) -> Path:
    """Run `build(staging)` unless `path` already holds a complete model; return `path`.

    Raises:
        SimulationError: `path` exists, is not empty and holds no complete model,
            or writing failed.
    """
    target = Path(path)
    if is_complete(target):
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SimulationError(f"{target} exists but holds no complete {what}",
                              hint="remove it or choose another directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        _publish(staging)
        _move_into_place(staging, target)
    except OSError as e:
        raise SimulationError(f"could not write the {what} to {target}: {e}",
                              hint="check that the directory is writable and has room") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_quietly(out: Path, *objects) -> None:
    """`save_pretrained` of each object (model, tokenizer) without its progress bar."""
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained draws one on stderr
    try:
        for obj in objects:
            obj.save_pretrained(out)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _publish(staging: Path) -> None:
    # mkdtemp made the directory private; a model is not a secret.
    staging.chmod(0o755)
    for f in staging.iterdir():
        f.chmod(0o644)


def _move_into_place(staging: Path, target: Path) -> None:
    if target.is_dir():
        target.rmdir()  # empty, checked above; fails if a racer filled it
    try:
        staging.rename(target)
    except OSError:
        if not is_complete(target):  # a concurrent maker winning is fine
            raise
