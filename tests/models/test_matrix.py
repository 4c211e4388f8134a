"""The support matrix: the data file, its parser, and `spark-vllm models`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO
from orchestrator.errors import SparkVllmError
from orchestrator.models.matrix import load_matrix, parse_matrix

# The handles of NVIDIA's playbook (25.11 matrix, test model, 70B and 405B steps).
PLAYBOOK_HANDLES = {
    "openai/gpt-oss-20b", "openai/gpt-oss-120b",
    "nvidia/Llama-3.1-8B-Instruct-FP8", "nvidia/Llama-3.1-8B-Instruct-FP4",
    "nvidia/Llama-3.3-70B-Instruct-FP4",
    "nvidia/Qwen3-8B-FP8", "nvidia/Qwen3-8B-FP4", "nvidia/Qwen3-14B-FP8", "nvidia/Qwen3-14B-FP4",
    "nvidia/Qwen3-32B-FP4", "nvidia/Qwen2.5-VL-7B-Instruct-FP4",
    "nvidia/Phi-4-multimodal-instruct-FP8", "nvidia/Phi-4-multimodal-instruct-FP4",
    "nvidia/Phi-4-reasoning-plus-FP8", "nvidia/Phi-4-reasoning-plus-FP4",
    "Qwen/Qwen2.5-Math-1.5B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
    "hugging-quants/Meta-Llama-3.1-405B-Instruct-AWQ-INT4",
}


def test_matrix_holds_the_playbooks_18_handles():
    m = load_matrix()
    assert {e.handle for e in m.models} == PLAYBOOK_HANDLES
    assert len(m.models) == 18


def test_presets_the_issue_names():
    m = load_matrix()
    assert m.find("nvidia/Phi-4-multimodal-instruct-FP4").preset == ("--trust-remote-code",)
    assert m.find("meta-llama/Llama-3.3-70B-Instruct").preset == ("--max-model-len", "2048")
    assert m.find("hugging-quants/Meta-Llama-3.1-405B-Instruct-AWQ-INT4").preset == (
        "--max-model-len", "256", "--gpu-memory-utilization", "1.0", "--max-num-seqs", "1",
        "--max-num-batched-tokens", "256")
    assert m.find("openai/gpt-oss-20b").preset == ()


def test_find_is_case_insensitive_and_misses_unknown_models():
    m = load_matrix()
    assert m.find("NVIDIA/qwen3-8b-fp4").handle == "nvidia/Qwen3-8B-FP4"
    assert m.find("someone/else") is None
    assert m.find(None) is None


def test_malformed_row_is_named():
    with pytest.raises(SparkVllmError, match="row 2"):
        parse_matrix('[[model]]\nhandle="a"\nname="a"\nquantization="q"\nparams_b=1\nsize_gb=1\nnodes=1\n'
                     '[[model]]\nhandle="b"\n')


def test_models_cli_json():
    out = subprocess.run([sys.executable, "-m", "launch", "models", "--json"], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True).stdout
    rows = json.loads(out)["models"]
    assert len(rows) == 18
    row = next(r for r in rows if r["handle"] == "meta-llama/Llama-3.3-70B-Instruct")
    assert (row["fits_one_spark"], row["nodes"], row["preset"]) == (False, 2, ["--max-model-len", "2048"])
    assert {"handle", "quantization", "size_gb", "nodes", "preset"} <= set(rows[0])


def test_wheel_ships_the_matrix(tmp_path):
    """`pip install .` must carry matrix.toml: build the wheel (from a copy, so no build/
    is left in the checkout) and look inside."""
    src = tmp_path / "src"
    for name in ("orchestrator", "launch"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("spark_vllm-*.whl"))
    assert "orchestrator/models/matrix.toml" in zipfile.ZipFile(wheel).namelist()
