"""`spark-vllm models`: the DGX Spark support matrix, with sizes and presets."""

from __future__ import annotations

import argparse

from orchestrator.models.matrix import load_matrix
from orchestrator.settings import Settings

from .options import add_json, print_json, table


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("models", help="the models known to run on DGX Spark, their size, Sparks needed and presets")
    add_json(p)
    p.set_defaults(func=run_models)


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    matrix = load_matrix()
    if args.json:
        print_json({"models": [m.to_json() for m in matrix.models]})
        return 0
    rows = [[m.handle, m.quantization, f"{m.size_gb:g} GB", str(m.nodes),
             " ".join(m.preset) or "-"] for m in matrix.models]
    print(table(rows, ["MODEL", "QUANT", "SIZE", "SPARKS", "PRESET"]))
    print("\nsizes are approximate; serve checks the real file sizes against the cluster's memory")
    return 0
