"""The cluster layer on another Ray, for real: `make compat` (benchmarks/ray_compat.py)
builds a venv per Ray version (this project without vLLM, plus `ray[default]==X`) and
runs this module with SPARK_VLLM_COMPAT_PYTHON set to that venv's Python, which then
runs every spark-vllm of the two simulated Sparks. A supported Ray forms a
token-protected two-node cluster (head, worker, status, stop) that refuses a Ray client
without the token; an older Ray stops in one line with exit 17. Skipped without the
variable (the suite's own Ray is tested by the other cluster tests)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from orchestrator import errors
from orchestrator.cluster import raycompat

from conftest import REPO
from namespace_sparks import HEAD_IP, READY, START_S, WORKER_IP, two_sparks

PYTHON = os.environ.get("SPARK_VLLM_COMPAT_PYTHON", "")
pytestmark = pytest.mark.skipif(not PYTHON, reason="`make compat` runs it with a venv's Python "
                                                   "(SPARK_VLLM_COMPAT_PYTHON)")

# A plain Ray client as anyone on the LAN could run it: no token, no RAY_AUTH_MODE. A
# refused driver may end its process (Ray 2.52's core worker does): one process each.
GCS_CLIENT = "import sys, ray; ray.init(address=sys.argv[1] + ':6379', logging_level='ERROR'); print('accepted')"
JOBS_CLIENT = """
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(f"http://{sys.argv[1]}:8265/api/jobs/", timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def venv_ray() -> str:
    r = subprocess.run([PYTHON, "-c", "from importlib.metadata import version; print(version('ray'))"],
                       capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.strip()


def supported(version: str) -> bool:
    try:
        raycompat.check_ray(version)
    except errors.UnsupportedRay:
        return False
    return True


@pytest.fixture(scope="module")
def sparks(netns_ok, tmp_path_factory):
    with two_sparks(tmp_path_factory.mktemp("compat"), python=PYTHON) as s:
        yield s


def test_a_supported_ray_forms_a_token_protected_cluster(sparks):
    s, version = sparks, venv_ray()
    if not supported(version):
        pytest.skip(f"Ray {version} is below the minimum: the next test")
    head = s.head("--nodes", "2", "--wait-timeout", str(START_S))
    # The worker once the head's raylet runs: both simulated Sparks share one /tmp, and a
    # worker started at once may take the head's plasma-store socket name (seen with Ray
    # 2.52: the head's raylet then dies on "bind: Address already in use"). Real Sparks
    # each have their own /tmp.
    head.wait_for("Ray head started")
    worker = s.worker("--join-timeout", str(START_S))
    head.wait_for(READY, 2 * START_S, watch=(worker,))
    worker.wait_for("joined the cluster")
    for p in (head, worker):
        assert "Ray token authentication on" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert f"Ray {version}" in head.stderr  # the start summary's versions of each node

    r, out = s.status(s.worker_node)
    assert r.returncode == 0 and out["complete"] is True, r.stderr
    assert [n["ip"] for n in out["nodes"] if n["alive"]] == [HEAD_IP, WORKER_IP]
    assert {n["versions"]["ray"] for n in out["nodes"]} == {version}, out
    assert out["auth"]["ray_token"] == "on"

    # Anyone without the token: refused by the GCS and by the Jobs API.
    home = s.tmp / "nobody"
    home.mkdir()
    env = {k: v for k, v in s.env({"HOME": str(home), "RAY_gcs_server_port_wait_time_s": "5"}).items()
           if not k.startswith("RAY_AUTH")}
    gcs, jobs = (s.head_node.run(PYTHON, "-c", code, HEAD_IP, env=env, capture_output=True, text=True,
                                 timeout=120, cwd=REPO) for code in (GCS_CLIENT, JOBS_CLIENT))
    assert gcs.returncode != 0 and "accepted" not in gcs.stdout, gcs.stdout + gcs.stderr[-2000:]
    assert jobs.stdout.strip() == "401", jobs.stdout + jobs.stderr[-2000:]
    client = {"gcs": f"refused (exit {gcs.returncode}): {gcs.stderr.strip().splitlines()[-1][:160]}",
              "jobs_api": 401}

    for node, p in ((s.worker_node, worker), (s.head_node, head)):
        s.stop(node)
        assert p.wait() == 0, p.stderr
    s.assert_nothing_left()
    print(f"Ray {version}: head, worker, status, stop passed; client without the token: {client}")


def test_an_older_ray_stops_in_one_line(sparks):
    s, version = sparks, venv_ray()
    if supported(version):
        pytest.skip(f"Ray {version} is supported: the previous test")
    for cmd in (("head", "--simulate", "--nodes", "1"), ("worker", "--simulate", "--head-ip", HEAD_IP)):
        r = s.cli(s.head_node, *cmd)
        assert r.returncode == 17, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"spark-vllm: error: Ray {version} is installed; spark-vllm needs Ray 2.52 or newer for its token "
            "authentication (pip install 'ray[default]>=2.52')"], r.stderr
    s.assert_nothing_left()
