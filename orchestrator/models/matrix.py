"""The DGX Spark support matrix, read from `matrix.toml` (package data) into values.

The table is data: adding a model is a few lines in the TOML file, no code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources

from ..errors import SparkVllmError


@dataclass(frozen=True)
class ModelEntry:
    handle: str  # Hugging Face id, as the playbook spells it
    name: str
    quantization: str
    params_b: float
    size_gb: float  # approximate weights on disk (see matrix.toml)
    nodes: int  # Sparks it needs
    preset: tuple[str, ...] = ()  # `vllm serve` flags
    gated: bool = False
    note: str = ""

    def to_json(self) -> dict:
        return {"handle": self.handle, "name": self.name, "quantization": self.quantization,
                "params_b": self.params_b, "size_gb": self.size_gb, "nodes": self.nodes,
                "fits_one_spark": self.nodes == 1, "preset": list(self.preset),
                "gated": self.gated, "note": self.note}


@dataclass(frozen=True)
class Matrix:
    models: tuple[ModelEntry, ...] = field(default_factory=tuple)

    def find(self, model: str | None) -> ModelEntry | None:
        """The row for a handle (case-insensitive, as the Hub resolves ids), else None."""
        key = (model or "").strip().lower()
        return next((m for m in self.models if m.handle.lower() == key), None)


def parse_matrix(text: str) -> Matrix:
    """Pure: the TOML text -> a Matrix; a malformed row names itself."""
    rows = tomllib.loads(text).get("model", [])
    models = []
    for i, row in enumerate(rows):
        try:
            models.append(ModelEntry(
                handle=row["handle"], name=row["name"], quantization=row["quantization"],
                params_b=float(row["params_b"]), size_gb=float(row["size_gb"]), nodes=int(row["nodes"]),
                preset=tuple(str(f) for f in row.get("preset", ())), gated=bool(row.get("gated", False)),
                note=row.get("note", ""),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise SparkVllmError(f"support matrix row {i + 1} is malformed: {exc!r}") from exc
    return Matrix(tuple(models))


def load_matrix() -> Matrix:
    return parse_matrix(resources.files(__package__).joinpath("matrix.toml").read_text(encoding="utf-8"))
