"""Ray's core library read early, as vLLM's CUDA build reads it at its own import.

Ray's C++ core takes its RAY_* settings (RAY_AUTH_MODE among them) once, when
`ray._raylet` first loads. Seen on a GPU machine: `serve` imported vLLM (and with it
Ray) on a thread beside the head's start, before the plan's token settings were set,
so the head's own GCS client went without the token its GCS required
(InvalidAuthToken, exit 4) and the GCS it had started was left running. Each case
runs in a fresh process, Ray loaded before the token variables are set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from orchestrator.cluster import ray_node

SCRIPT = r"""
import json, os, sys
import ray._raylet  # before the token settings, as vLLM's CUDA build does
mode, tmp, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
token = os.path.join(tmp, "ray-token")
with open(token, "w") as f:
    f.write("5c1e" * 16)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token, RAY_gcs_server_port_wait_time_s="3")
from orchestrator.cluster import ray_node
import psutil
opts = ray_node.ClusterOptions(node_ip="127.0.0.1", head_ip="127.0.0.1", port=port, num_cpus=1, num_gpus=0,
                               temp_dir=os.path.join(tmp, "ray"))
out = {}
try:
    if mode == "start_node":  # Ray's start alone, the token settings not re-read: refused
        ray_node.start_node(opts)
        out["started"] = True
    else:  # the head's own GCS client took the token: the start would be refused otherwise
        node = ray_node.RayNode(opts)
        out["started"] = True
        node.stop()
except Exception as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)[:2000]
out["left"] = [p.name() for p in psutil.Process().children(recursive=True) if p.is_running()
               and p.status() != psutil.STATUS_ZOMBIE]
print("RESULT " + json.dumps(out))
"""


def run_case(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    tmp = tempfile.mkdtemp(prefix="svauth-")  # short: Ray's socket paths must stay under 108 bytes
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, mode, tmp, str(46300 + os.getpid() % 500)],
                           capture_output=True, text=True, timeout=180, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(line.split(" ", 1)[1])


def test_head_with_token_auth_starts_although_ray_loaded_first():
    out = run_case("node")
    assert "error" not in out, out["error"]
    assert out["started"] and out["left"] == []


def test_a_refused_start_leaves_no_ray_daemon():
    """The head's GCS came up, then its own client was refused: what it started is stopped."""
    out = run_case("start_node")
    assert "InvalidAuthToken" in out.get("error", ""), out
    assert out["left"] == [], f"left running after a failed start: {out['left']}"


@pytest.mark.parametrize("wanted, loaded, mismatch", [
    ("token", "disabled", True), ("token", "token", False), ("disabled", "disabled", False),
    (None, "disabled", False), (None, "token", False), ("TOKEN", "token", False), ("disabled", "token", True)])
def test_loaded_auth_mismatch(wanted, loaded, mismatch):
    assert ray_node.loaded_auth_mismatch(wanted, loaded) is mismatch


@pytest.mark.parametrize("cmdline, ray", [
    (["/x/site-packages/ray/core/src/ray/gcs/gcs_server", "--x"], True),
    (["/usr/bin/python3", "-u", "/x/site-packages/ray/dashboard/agent.py"], True),
    (["raylet"], True),
    (["/usr/bin/python3", "-m", "vllm.entrypoints"], False),
    ([], False)])
def test_ray_daemons_are_told_apart(cmdline, ray):
    assert ray_node.is_ray_daemon(cmdline) is ray
