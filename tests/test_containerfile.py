"""The Containerfile cannot be built here (no Docker engine); check what can be
checked: it parses into known instructions, uses spark-vllm as the entrypoint, and
installs the package without replacing the image's vLLM and torch."""

from __future__ import annotations

import json
from conftest import REPO

INSTRUCTIONS = {"FROM", "ARG", "RUN", "COPY", "ENV", "ENTRYPOINT", "CMD", "WORKDIR", "LABEL", "USER", "HEALTHCHECK"}


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Containerfile").read_text()
    logical, out = "", []
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = logical.strip().partition(" ")
            out.append((word, rest))
            logical = ""
    return out


def test_containerfile_parses_into_known_instructions():
    steps = instructions()
    assert steps and steps[0][0] in {"ARG", "FROM"}
    assert {w for w, _ in steps} <= INSTRUCTIONS


def test_entrypoint_is_spark_vllm_and_image_packages_are_kept():
    steps = dict(instructions())
    assert json.loads(steps["ENTRYPOINT"]) == ["spark-vllm"]
    runs = [rest for word, rest in instructions() if word == "RUN"]
    assert any("--no-deps /opt/spark-vllm" in r for r in runs)
    assert not any("vllm" in r.replace("spark-vllm", "") for r in runs)  # the image's vLLM stays
    assert any("ray[default]" in r for r in runs)


def test_healthcheck_is_spark_vllm_health():
    steps = dict(instructions())
    assert steps["HEALTHCHECK"].endswith('CMD ["spark-vllm", "health"]')
    assert 'ARG BASE=nvcr.io/nvidia/vllm:25.11-py3' in (REPO / "Containerfile").read_text()
