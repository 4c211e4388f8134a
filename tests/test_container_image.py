"""The Containerfile built for real and its entrypoint run as PID 1.

No Docker engine here: `benchmarks/container_build.sh` builds the image with buildah
(chroot isolation) against a stand-in base made from Debian's packages (it installs
buildah and debootstrap where missing). Then `benchmarks/container_pid1.py` runs the
image's `spark-vllm` as PID 1 of its own PID namespace, chrooted into the mounted
image, inside two simulated Sparks: without Ray (a worker waiting for an absent
head), then a head and a worker forming a real Ray cluster. About 3 minutes on a
fresh machine, 1 once the base is cached. The image is built on a base without Ray
(NVIDIA's from 26.05 on) and on one with an older Ray (2.51.1, as 25.x images).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from benchmarks.container_pid1 import run_pid1
from orchestrator.cluster import raycompat

from conftest import PREFIX, REPO

IMAGE = "localhost/spark-vllm:test"
OLD_RAY = "2.51.1"  # below the minimum: the image must replace it
# Ray with its dashboard and Jobs API, and spark-vllm, importable by the image's Python;
# the versions of Ray, vLLM and torch as pip sees them.
IMPORTS = ("import json, ray, ray.dashboard.modules.job.sdk, aiohttp, launch, orchestrator\n"
           "from importlib.metadata import version, PackageNotFoundError\n"
           "def v(name):\n"
           "    try:\n        return version(name)\n"
           "    except PackageNotFoundError:\n        return None\n"
           "print(json.dumps({n: v(n) for n in ('ray', 'vllm', 'torch')}))")


def build(tag: str, **env: str) -> str:
    """container_build.sh into `tag`: the build's output (its Ray line)."""
    if os.geteuid() != 0:
        pytest.skip("buildah's chroot build and PID namespaces need root")
    r = subprocess.run(["sh", str(REPO / "benchmarks" / "container_build.sh"), tag], capture_output=True,
                       text=True, timeout=1200, cwd=REPO, env={**os.environ, **env})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def versions_in(image: str) -> dict:
    ctr = subprocess.run(["buildah", "from", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        r = subprocess.run(["buildah", "run", "--isolation", "chroot", ctr, "python3", "-c", IMPORTS],
                           capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def image(netns_ok):
    """Built on a base without Ray (the stand-in base, as NVIDIA's images from 26.05 on)."""
    out = build(IMAGE)
    assert "Ray: the image has none; installing ray[default]>=2.52.0" in out, out[-3000:]
    yield IMAGE
    subprocess.run(["buildah", "rmi", "-f", IMAGE], capture_output=True, timeout=120)


def test_image_has_the_entrypoint_healthcheck_and_ray_jobs(image):
    r = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)["Docker"]["config"]
    assert config["Entrypoint"] == ["spark-vllm"] and config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"] == ["CMD", "spark-vllm", "health"]
    got = versions_in(image)
    raycompat.check_ray(got["ray"])  # a supported Ray, from a base that had none


def test_a_base_with_an_old_ray_gets_a_supported_one_and_keeps_vllm_and_torch(netns_ok):
    """A base holding Ray 2.51.1 and (as metadata) NVIDIA's vLLM and torch, as 25.x images:
    the image gets a supported Ray with the dashboard, its vLLM and torch untouched."""
    tag = "localhost/spark-vllm:test-old-ray"
    out = build(tag, RAY_IN_BASE=OLD_RAY)
    try:
        assert f"Ray: the image has ray=={OLD_RAY}; installing ray[default]>=2.52.0" in out, out[-3000:]
        got = versions_in(tag)
    finally:
        subprocess.run(["buildah", "rmi", "-f", tag], capture_output=True, timeout=120)
    raycompat.check_ray(got["ray"])
    assert (got["torch"], got["vllm"]) == ("2.10.0a0+b558c986e8.nv25.11", "0.11.0+nv25.11"), got


def test_pid1_without_ray_stops_on_sigterm_and_fails_in_one_line(image):
    checks = run_pid1(image, light=True, prefix=PREFIX)["checks"]
    assert checks["pid1_is_spark_vllm"] and "simulate=yes (flag)" in checks["start_summary"]
    assert checks["health_while_joining"] == [1, "unhealthy: no spark-vllm node runs here"]
    assert checks["sigterm_while_joining"]["exit"] == 0
    assert checks["sigterm_while_joining"]["last_line"] == "spark-vllm: stopped"
    unreachable = checks["head_unreachable"]
    assert unreachable["exit"] == 4 and unreachable["last_line"].startswith("spark-vllm: error: head ")
    assert not any(checks["left_in_namespaces"].values()) and checks["tracebacks"] == 0, checks


def test_pid1_head_and_worker_form_a_cluster_and_stop_cleanly(image):
    checks = run_pid1(image, light=False, prefix=PREFIX)["checks"]
    # Configured as `container run --worker` configures it: SPARK_VLLM_HEAD_IP, no flag.
    assert "head-ip=192.168.100.10 (env)" in checks["worker_start_summary"], checks["worker_start_summary"]
    assert checks["health_head"][0] == 0 and "healthy: the head on" in checks["health_head"][1]
    assert checks["health_worker"][0] == 0 and "healthy: the worker on" in checks["health_worker"][1]
    assert checks["sigterm_worker"]["exit"] == 0 and checks["sigterm_worker"]["left_in_namespace"] == []
    assert checks["sigterm_head"]["exit"] == 0 and checks["sigterm_head"]["last_line"] == "spark-vllm: stopped"
    # The worker whose head went away exits 7, for its restart policy.
    assert checks["worker_after_head_left"]["exit"] == 7, checks
    assert checks["zombies_under_pid1_while_running"] == {"head": 0, "worker": 0}
    assert not any(checks["left_in_namespaces"].values()) and checks["tracebacks"] == 0, checks
