"""`spark-vllm demo` end to end, in its loopback form (what a machine without root
gets: 127.0.0.2 and .3 on `lo` in this namespace), with the tiny random model (the
real one is checked in test_smollm.py). The namespace form runs through the same
`serving_cluster` in test_serve.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import REPO, clean_env
from orchestrator.cluster.membership import port_open
from orchestrator.sim.namespaces import netns


def test_demo_loopback_serves_both_requests_and_leaves_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "launch", "demo", "--model", "tiny", "--loopback", "--json",
                          "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, env=clean_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["url"] == "http://127.0.0.2:8000/v1"
    assert result["model"] == "tiny-llama" and result["path"] == str(tmp_path / "tiny-llama")  # a name, not a path
    assert result["auth"] == {"ray_token": "on", "api_key": "on"}  # the requests went through both
    assert result["answers"]["chat"]["prompt"] == "What is 12*17?" and result["answers"]["chat"]["tokens"] == 32
    assert result["answers"]["completion"]["prompt"] == "Write a haiku about a GPU"
    assert result["answers"]["completion"]["tokens"] == 32
    assert "loopback addresses stand in" in out.stderr and "TP 2 x PP 1" in out.stderr
    assert {"model", "cluster_and_engine", "requests", "stop", "single_process", "total"} <= set(result["timings_s"])
    # The demo's own check: TP 2 answered the tokens vLLM answers in one process.
    check = result["tp2_vs_single_process"]
    assert check["identical"] and check["prompts"] == 2 and check["tokens"] == 64
    # Nothing left: the server and both Ray nodes are gone, no process runs from the demo's folder.
    assert not port_open("127.0.0.2", 8000, 1) and not port_open("127.0.0.2", 6379, 1)
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []


def test_a_failed_demo_keeps_the_logs_its_error_names(netns_ok, tmp_path):
    """The head cannot be ready within 1 s: exit 11, and the folder the error points at
    is still there (without --keep, the demo removes its folder only on success)."""
    out = subprocess.run([sys.executable, "-m", "launch", "demo", "--model", "tiny", "--timeout", "1"],
                         capture_output=True, text=True, timeout=300, env=clean_env(TMPDIR=str(tmp_path)), cwd=REPO)
    assert out.returncode == 11, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    named = re.search(r"full log: ([^\s)]+)", out.stderr)
    assert named and Path(named.group(1)).is_file() and Path(named.group(1)).parent.parent == tmp_path, out.stderr
    assert netns.list_namespaces("sparkdemo-") == []  # the simulated Sparks are gone all the same
