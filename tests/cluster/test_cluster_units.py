"""The cluster's pure parts over plain values: Ray's node table, versions, the auth
plan, Ray's parameters, the node's role, and the run records of `spark-vllm stop`."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from launch.cli import exit_code_for
from orchestrator import errors
from orchestrator.cluster import runstate
from orchestrator.cluster.auth import ensure_token, plan_auth
from orchestrator.cluster.bootstrap import SIMULATE_VAR, NodeRequest, apply_environment, attached_request, plan_node
from orchestrator.cluster.membership import check_head_subnet, port_open, wait_for_port
from orchestrator.cluster.ray_node import HEALTH_CHECK, ClusterOptions, attach_address, health_check_config, ray_params
from orchestrator.net.discovery import Discovery
from orchestrator.cluster.nodes import HEAD_RESOURCE, ClusterState, newly_joined, newly_lost, parse_nodes
from orchestrator.cluster.versions import OVERRIDE_VAR, compare, describe, local_report, skew_table

HEAD, WORKER = "192.168.100.10", "192.168.100.11"


# --- Ray's node table ---------------------------------------------------------------
def row(node_id: str, ip: str, alive: bool = True, gpus: float | None = 1, head: bool = False, **extra) -> dict:
    """One row as `ray.nodes()` returns it (only the keys parse_nodes reads, plus noise)."""
    resources = {"CPU": 2.0, "memory": 1e9, f"node:{ip}": 1.0}
    if gpus is not None:
        resources["GPU"] = float(gpus)
    if head:
        resources[HEAD_RESOURCE] = 1.0
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": alive,
            "Resources": resources if alive else {}, "DeathReasonMessage": "", "NodeName": ip, **extra}


def test_parse_nodes_reads_ip_alive_gpus_and_the_head():
    nodes = parse_nodes([row("w", WORKER), row("h", HEAD, head=True)])
    assert [(n.node_id, n.ip, n.alive, n.gpus, n.head) for n in nodes] == [
        ("h", HEAD, True, 1.0, True),  # the head first
        ("w", WORKER, True, 1.0, False),
    ]
    assert nodes[0].to_json() == {"ip": HEAD, "alive": True, "gpus": 1.0, "head": True,
                                  "node_id": "h", "death_reason": ""}


def test_parse_nodes_dead_rows_and_missing_fields():
    dead = row("old", WORKER, alive=False, DeathReasonMessage="health check failed")
    nodes = parse_nodes([dead, row("new", WORKER), {"NodeID": "x"}])
    by_id = {n.node_id: n for n in nodes}
    assert by_id["old"].alive is False and by_id["old"].gpus == 0 and "health check" in by_id["old"].death_reason
    assert by_id["x"] == by_id["x"].__class__("x", "", False, 0.0, False, "")
    assert nodes.index(by_id["new"]) < nodes.index(by_id["old"])  # alive before dead


def test_parse_nodes_head_flag_without_the_resource():
    (n,) = parse_nodes([{**row("h", HEAD), "IsHeadNode": True}])
    assert n.head


def test_cluster_state_counts_only_alive_gpu_nodes():
    state = ClusterState(parse_nodes([
        row("h", HEAD, head=True),
        row("cpu", "192.168.100.12", gpus=None),  # a CPU-only node does not count
        row("old", WORKER, alive=False),
    ]), want=2)
    assert [n.node_id for n in state.gpu_nodes] == ["h"]
    assert (state.complete, state.missing, state.gpus) == (False, 1, 1)
    assert [n.node_id for n in state.dead] == ["old"]
    assert state.summary() == f"1 of 2 GPU nodes: {HEAD} (1 GPU)"


def test_cluster_state_complete_and_empty():
    full = ClusterState(parse_nodes([row("h", HEAD, head=True, gpus=2), row("w", WORKER)]), want=2)
    assert (full.complete, full.missing, full.gpus) == (True, 0, 3)
    empty = ClusterState((), want=2)
    assert (empty.complete, empty.missing, empty.summary()) == (False, 2, "0 of 2 GPU nodes: none")
    assert ClusterState(parse_nodes([row("h", HEAD), row("w", WORKER)]), want=1).complete  # more is fine


def test_newly_joined_and_lost():
    one = ClusterState(parse_nodes([row("h", HEAD, head=True)]), 2)
    two = ClusterState(parse_nodes([row("h", HEAD, head=True), row("w", WORKER)]), 2)
    assert [n.node_id for n in newly_joined(None, one)] == ["h"]
    assert [n.node_id for n in newly_joined(one, two)] == ["w"]
    assert newly_joined(two, two) == () and newly_lost(two, two) == () and newly_lost(None, two) == ()
    lost = ClusterState(parse_nodes([row("h", HEAD, head=True), row("w", WORKER, alive=False)]), 2)
    assert [n.node_id for n in newly_lost(two, lost)] == ["w"]
    # A restarted worker: the old id dead, a new id alive on the same address.
    back = ClusterState(parse_nodes([row("h", HEAD, head=True), row("w", WORKER, alive=False),
                                     row("w2", WORKER)]), 2)
    assert [n.node_id for n in newly_joined(lost, back)] == ["w2"]
    assert back.complete


# --- versions ----------------------------------------------------------------------
REPORT = {"python": "3.11.9", "ray": "2.60.0", "vllm": "0.32.0", "torch": "2.13.0", "nccl": None,
          "nccl-build": None, "spark-vllm": "0.1.0"}


def test_same_versions_no_skew():
    assert compare({HEAD: dict(REPORT), WORKER: dict(REPORT)}) == []
    assert compare({HEAD: dict(REPORT)}) == []


def test_skew_names_component_and_both_values():
    skews = compare({HEAD: REPORT, WORKER: {**REPORT, "vllm": "0.0.1", "ray": "2.59.0"}})
    assert [(s.component, s.values) for s in skews] == [
        ("ray", {HEAD: "2.60.0", WORKER: "2.59.0"}),
        ("vllm", {HEAD: "0.32.0", WORKER: "0.0.1"}),
    ]
    table = skew_table(skews).splitlines()
    assert table[0].split() == ["component", HEAD, WORKER]
    assert table[2].split() == ["vllm", "0.32.0", "0.0.1"]


def test_nccl_missing_on_one_node_only_is_a_skew():
    skews = compare({HEAD: REPORT, WORKER: {**REPORT, "nccl": "2.27.7"}})
    assert [(s.component, s.values) for s in skews] == [("nccl", {HEAD: None, WORKER: "2.27.7"})]
    assert "None" in skew_table(skews)


def test_describe_names_what_an_owner_compares():
    report = {"python": "3.12.3", "ray": "2.60.0", "vllm": "0.31.0", "torch": "2.15.0a0", "nccl": None}
    assert describe(report) == "Ray 2.60.0, vLLM 0.31.0, torch 2.15.0a0, NCCL -"
    assert describe({}) == "Ray -, vLLM -, torch -, NCCL -"


def test_local_report_and_its_override():
    base = local_report({})
    assert set(base) == set(REPORT) and base["ray"] and base["python"].count(".") == 2
    over = local_report({OVERRIDE_VAR: '{"vllm": "0.0.1"}'})
    assert over == {**base, "vllm": "0.0.1"}


# --- auth ---------------------------------------------------------------------------
DEFAULT_TOKEN = os.path.expanduser("~/.ray/auth_token")


def test_auth_on_by_default_in_rays_default_file():
    p = plan_auth({}, None)
    assert (p.enabled, p.token_file) == (True, DEFAULT_TOKEN)
    assert p.env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": DEFAULT_TOKEN}
    assert "on" in p.describe() and p.to_json() == {"enabled": True, "token_file": DEFAULT_TOKEN}


@pytest.mark.parametrize("environ, no_auth", [({}, True), ({"RAY_AUTH_MODE": "disabled"}, False),
                                              ({"RAY_AUTH_MODE": "Disabled"}, True)])
def test_auth_off_only_when_asked(environ, no_auth):
    p = plan_auth(environ, None, no_auth=no_auth)
    assert (p.enabled, p.token_file, p.env) == (False, None, {"RAY_AUTH_MODE": "disabled"})
    assert "off" in p.describe()


def test_auth_token_file_flag(tmp_path):
    p = plan_auth({}, "~/tok")
    assert p.enabled and p.env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": os.path.expanduser("~/tok")}
    assert p.token_file == os.path.expanduser("~/tok") and p.token_file in p.describe()
    # The flag beats RAY_AUTH_TOKEN_PATH and RAY_AUTH_TOKEN.
    assert plan_auth({"RAY_AUTH_TOKEN_PATH": "/env/tok"}, str(tmp_path / "t")).token_file == str(tmp_path / "t")
    assert plan_auth({"RAY_AUTH_TOKEN": "s3cret"}, str(tmp_path / "t")).token_file == str(tmp_path / "t")


@pytest.mark.parametrize("environ, token_file", [
    ({"RAY_AUTH_MODE": "token"}, DEFAULT_TOKEN),
    ({"RAY_AUTH_MODE": "TOKEN", "RAY_AUTH_TOKEN": "s3cret"}, None),
    ({"RAY_AUTH_TOKEN": "s3cret"}, None),
    ({"RAY_AUTH_TOKEN_PATH": "/env/tok"}, "/env/tok"),
])
def test_auth_on_from_the_environment(environ, token_file):
    p = plan_auth(environ, None)
    assert p.enabled and p.env["RAY_AUTH_MODE"] == "token" and p.token_file == token_file
    assert "s3cret" not in p.describe() and "s3cret" not in str(p.env) and "s3cret" not in str(p.to_json())


@pytest.mark.parametrize("environ, token_file, no_auth, match", [
    ({"RAY_AUTH_MODE": "disabled"}, "/tok", False, "RAY_AUTH_MODE=disabled conflicts"),
    ({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "s3cret"}, None, False, "RAY_AUTH_MODE=disabled conflicts"),
    ({}, "/tok", True, "--no-auth conflicts"),
    ({"RAY_AUTH_MODE": "token"}, None, True, "--no-auth conflicts"),
    ({"RAY_AUTH_MODE": "k8s"}, None, False, "RAY_AUTH_MODE=k8s is not supported"),
])
def test_auth_conflicts(environ, token_file, no_auth, match):
    with pytest.raises(errors.UsageError, match=match) as e:
        plan_auth(environ, token_file, no_auth)
    assert "s3cret" not in str(e.value)


def test_head_creates_a_missing_token_file_0600(tmp_path):
    path = tmp_path / "sub" / "token"
    p = plan_auth({}, str(path))
    assert ensure_token(p, create=True, environ={}) is True
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(p, create=True, environ={}) is False and path.read_text() == token  # kept


def test_worker_needs_the_token_file(tmp_path):
    p = plan_auth({}, str(tmp_path / "token"))
    with pytest.raises(errors.UsageError, match="missing or empty") as e:
        ensure_token(p, create=False, environ={})
    assert exit_code_for(e.value) == 2
    assert "scp" in e.value.hint and "--no-auth" in e.value.hint  # the fix, named
    (tmp_path / "token").write_text("\n")
    with pytest.raises(errors.UsageError, match="missing or empty"):
        ensure_token(p, create=False, environ={})
    assert not (tmp_path / "token").read_text().strip()  # a worker never writes one


def test_ensure_token_without_a_file():
    assert ensure_token(plan_auth({}, None, no_auth=True), create=True, environ={}) is False  # auth off
    assert ensure_token(plan_auth({"RAY_AUTH_TOKEN": "x"}, None), create=False, environ={"RAY_AUTH_TOKEN": "x"}) is False


# --- Ray's parameters ------------------------------------------------------------------
def test_ray_params_head():
    opts = ClusterOptions(node_ip=HEAD, head_ip=HEAD)
    assert opts.head and opts.gcs_address == f"{HEAD}:6379"
    assert ray_params(opts) == {"node_ip_address": HEAD, "gcs_server_port": 6379, "dashboard_host": HEAD,
                                "_system_config": HEALTH_CHECK}
    opts = ClusterOptions(node_ip=HEAD, head_ip=HEAD, port=7000, dashboard_host="0.0.0.0", num_cpus=4,
                          num_gpus=2, temp_dir="/t")
    assert ray_params(opts) == {"node_ip_address": HEAD, "gcs_server_port": 7000, "dashboard_host": "0.0.0.0",
                                "num_cpus": 4, "num_gpus": 2, "temp_dir": "/t", "_system_config": HEALTH_CHECK}


def test_head_health_checks_fast_unless_the_user_set_them():
    """Ray's 20-55 s node-death detection cut to about 5-10 s; a RAY_health_check_*
    variable wins (the system config would override it in the GCS)."""
    assert HEALTH_CHECK["health_check_period_ms"] * HEALTH_CHECK["health_check_failure_threshold"] <= 10000
    assert health_check_config({"RAY_health_check_period_ms": "3000"}) == {
        "health_check_timeout_ms": 2000, "health_check_failure_threshold": 5}
    every = {f"RAY_{k}": "1" for k in HEALTH_CHECK}
    opts = ClusterOptions(node_ip=HEAD, head_ip=HEAD)
    assert "_system_config" not in ray_params(opts, every)
    assert "_system_config" not in ray_params(ClusterOptions(node_ip=WORKER, head_ip=HEAD))  # the GCS is the head's


def test_ray_params_worker():
    opts = ClusterOptions(node_ip=WORKER, head_ip=HEAD, port=7000)
    assert not opts.head
    assert ray_params(opts) == {"node_ip_address": WORKER, "gcs_address": f"{HEAD}:7000"}


def test_ray_params_simulate_one_gpu_small_object_store():
    p = ray_params(ClusterOptions(node_ip=WORKER, head_ip=HEAD, simulate=True))
    assert p["num_gpus"] == 1 and p["object_store_memory"] == 256 * 1024 * 1024 and "gcs_server_port" not in p
    assert ray_params(ClusterOptions(node_ip=HEAD, head_ip=HEAD, simulate=True, num_gpus=2))["num_gpus"] == 2


@pytest.mark.parametrize("environ, address", [
    ({}, None),
    ({"RAY_ADDRESS": ""}, None),
    ({"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"),
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, "auto"),
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"),
])
def test_attach_address(environ, address):
    assert attach_address(environ) == address


def test_check_head_subnet(make_iface):
    iface = make_iface(ipv4=("192.168.100.11/24",))
    check_head_subnet(HEAD, iface)
    with pytest.raises(errors.WrongSubnet, match=r"192\.168\.101\.10 is not on enp1s0f1np1's subnet") as e:
        check_head_subnet("192.168.101.10", iface)
    assert exit_code_for(e.value) == 4 and "192.168.100.11/24" in str(e.value)


# --- the node's plan ------------------------------------------------------------------
@pytest.fixture
def spark(make_iface):
    """A Spark whose fabric port holds .10 (and its twin .101.10)."""
    return Discovery((make_iface("enp1s0f1np1", f"{HEAD}/24"),
                      make_iface("enP2p1s0f1np1", "192.168.101.10/24", roce="roceP2p1s0f1")), "netlink")


def test_plan_node_without_head_ip_is_the_head(spark):
    plan = plan_node(NodeRequest(), spark, {})
    assert plan.role == "head" and plan.cluster.head and plan.cluster.node_ip == plan.cluster.head_ip == HEAD
    assert plan.auth.enabled and plan.environment()["RAY_AUTH_MODE"] == "token"
    assert not plan_node(NodeRequest(no_auth=True), spark, {}).auth.enabled


def test_plan_node_owning_head_ip_is_the_head(spark):
    """The same command on both Sparks: the one holding --head-ip (even on its twin port)
    is the head, and uses that address."""
    for head_ip in (HEAD, "192.168.101.10"):
        plan = plan_node(NodeRequest(head_ip=head_ip), spark, {})
        assert (plan.role, plan.cluster.node_ip, plan.cluster.head_ip) == ("head", head_ip, head_ip)


def test_plan_node_other_head_ip_is_a_worker(spark):
    opts = ClusterOptions(node_ip="", head_ip="", port=7000, nodes=3, join_timeout=9)
    plan = plan_node(NodeRequest(head_ip=WORKER, simulate=True, cluster=opts), spark, {})
    c = plan.cluster
    assert (plan.role, c.node_ip, c.head_ip, c.gcs_address) == ("worker", HEAD, WORKER, f"{WORKER}:7000")
    assert (c.nodes, c.join_timeout, c.simulate) == (3, 9, True) and not c.head
    env = plan.environment()
    assert env[SIMULATE_VAR] == "1" and env["VLLM_HOST_IP"] == HEAD and env["MASTER_ADDR"] == WORKER


def test_attached_serve_plans_the_network_of_the_node_running_here(make_iface):
    """`serve` inside `ray job submit` on a Spark whose /sys shows no RoCE device (a user
    names none): the head's run record gives the interface and address, as `status` reads
    it, instead of discovery failing."""
    no_roce = Discovery((make_iface("enp1s0f1np1", f"{HEAD}/24", roce=()), make_iface("enP7s7", "10.20.0.10/24", roce=())),
                        "netlink")
    with pytest.raises(errors.NoRdmaInterface, match="--iface"):
        plan_node(NodeRequest(), no_roce, {})
    head = runstate.RunRecord(1, "head", HEAD, f"{HEAD}:6379", iface="enp1s0f1np1", token_file="/t")
    plan = plan_node(attached_request(NodeRequest(simulate=True), head), no_roce, {})
    assert (plan.role, plan.network.choice.name, plan.cluster.node_ip, plan.auth.token_file) == (
        "head", "enp1s0f1np1", HEAD, "/t")
    # What the user names wins; no node running here: discovery, as before.
    assert attached_request(NodeRequest(iface="enP7s7"), head) == NodeRequest(iface="enP7s7")
    assert attached_request(NodeRequest(head_ip=WORKER), head) == NodeRequest(head_ip=WORKER)
    assert attached_request(NodeRequest(), None) == NodeRequest()
    worker = runstate.RunRecord(2, "worker", WORKER, f"{HEAD}:6379", iface="enp1s0f1np1")
    assert attached_request(NodeRequest(token_file="/mine"), worker) == NodeRequest(
        iface="enp1s0f1np1", node_ip=WORKER, head_ip=HEAD, token_file="/mine")


def test_plan_node_worker_on_the_wrong_subnet(make_iface):
    one_port = Discovery((make_iface("enp1s0f1np1", f"{WORKER}/24"),), "netlink")
    with pytest.raises(errors.WrongSubnet, match="192.168.101.10"):
        plan_node(NodeRequest(head_ip="192.168.101.10"), one_port, {})


def test_plan_node_refuses_zero_nodes(spark):
    with pytest.raises(errors.UsageError, match="--nodes 0"):
        plan_node(NodeRequest(cluster=ClusterOptions(node_ip="", head_ip="", nodes=0)), spark, {})


def test_plan_node_token_and_apply(spark, tmp_path):
    plan = plan_node(NodeRequest(head_ip=WORKER, token_file=str(tmp_path / "t")), spark, {"GLOO_SOCKET_IFNAME": "eth0"})
    environ = {"GLOO_SOCKET_IFNAME": "eth0"}
    apply_environment(plan, environ)
    assert environ["RAY_AUTH_MODE"] == "token" and environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "t")
    assert environ["GLOO_SOCKET_IFNAME"] == "eth0"  # the user's value is kept
    assert environ["NCCL_SOCKET_IFNAME"] == "enp1s0f1np1"


# --- TCP ------------------------------------------------------------------------------
def test_wait_for_port_answers_and_times_out():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert port_open("127.0.0.1", port)
        assert wait_for_port("127.0.0.1", port, timeout=5) < 5
    assert not port_open("127.0.0.1", port)
    with pytest.raises(errors.HeadUnreachable, match=rf"127\.0\.0\.1:{port} did not answer within 0.5 s") as e:
        wait_for_port("127.0.0.1", port, timeout=0.5)
    assert exit_code_for(e.value) == 4


@pytest.mark.parametrize("kind, code", [
    (errors.HeadUnreachable, 4), (errors.WrongSubnet, 4), (errors.ClusterIncomplete, 5),
    (errors.VersionSkew, 6), (errors.NodeLost, 7), (errors.ClusterError, 4), (errors.Stopped, 0),
])
def test_cluster_exit_codes(kind, code):
    assert exit_code_for(kind("x")) == code


# --- run records (`spark-vllm stop`) ---------------------------------------------------------
def test_run_dir():
    assert str(runstate.run_dir({})) == runstate.DEFAULT_RUN_DIR
    assert str(runstate.run_dir({"SPARK_VLLM_RUN_DIR": "/x"})) == "/x"


def finished_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def test_records_keyed_by_node_address(tmp_path):
    me = runstate.RunRecord(os.getpid(), "head", HEAD, f"{HEAD}:6379")
    gone = runstate.RunRecord(finished_pid(), "worker", WORKER, f"{HEAD}:6379")
    path = runstate.write_record(tmp_path / "run", me)
    runstate.write_record(tmp_path / "run", gone)
    assert path.name == f"node-{HEAD}.json"
    assert runstate.records_for(tmp_path / "run", [HEAD, WORKER, "10.0.0.1"]) == [me]  # the dead one is skipped
    assert runstate.records_for(tmp_path / "nowhere", [HEAD]) == []
    runstate.record_path(tmp_path / "run", "10.0.0.1").write_text("{not json")
    assert runstate.records_for(tmp_path / "run", ["10.0.0.1"]) == []


def test_record_round_trip_with_whereabouts_and_unknown_fields(tmp_path):
    rec = runstate.RunRecord(os.getpid(), "head", HEAD, f"{HEAD}:6379", "serving", iface="enp1s0f1np1",
                             token_file="/t/ray-token", server_url=f"http://{HEAD}:8000")
    path = runstate.write_record(tmp_path, rec)
    assert runstate.read_record(tmp_path, HEAD) == rec
    path.write_text(json.dumps({**json.loads(path.read_text()), "from_a_newer_version": 1}))
    assert runstate.read_record(tmp_path, HEAD) == rec  # a newer writer's extra field is ignored
    old = {"pid": 1, "role": "worker", "node_ip": WORKER, "gcs_address": f"{HEAD}:6379"}  # an older writer
    assert runstate.RunRecord.from_json(old) == runstate.RunRecord(1, "worker", WORKER, f"{HEAD}:6379")


def test_local_node_prefers_the_head():
    head = runstate.RunRecord(1, "head", HEAD, f"{HEAD}:6379")
    worker = runstate.RunRecord(2, "worker", WORKER, f"{HEAD}:6379")
    assert runstate.local_node([worker, head]) == head
    assert runstate.local_node([worker]) == worker
    assert runstate.local_node([]) is None


def test_remove_record_only_our_own(tmp_path):
    rec = runstate.RunRecord(os.getpid(), "head", HEAD, f"{HEAD}:6379")
    path = runstate.write_record(tmp_path, rec)
    runstate.remove_record(tmp_path, HEAD, os.getpid() + 1)  # another process's: kept
    assert path.exists()
    runstate.remove_record(tmp_path, HEAD, os.getpid())
    assert not path.exists()
    runstate.remove_record(tmp_path, HEAD, os.getpid())  # already gone: no error


def test_terminate_graceful_and_forced():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert runstate.terminate(p.pid, timeout=10) is True
        assert p.wait(5) == -signal.SIGTERM
    finally:
        p.kill()
    # Ignores SIGTERM and has a child: both killed after the timeout.
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, subprocess, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                 "c = subprocess.Popen(['sleep', '60']); print(c.pid, flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        child = int(stubborn.stdout.readline())  # the handler is in place
        assert runstate.terminate(stubborn.pid, timeout=0.5) is False
        stubborn.wait(5)  # (terminate reaped it already: its status is gone)
        assert not runstate.pid_alive(stubborn.pid) and not runstate.pid_alive(child)
    finally:
        stubborn.kill()
        stubborn.stdout.close()
    assert runstate.terminate(finished_pid()) is True and not runstate.pid_alive(finished_pid())


# --- --node-ip: several addresses on one port, or loopback stand-ins ------------------
def test_node_ip_on_loopback_picks_role_by_address(make_iface):
    lo = Discovery((make_iface("lo", "127.0.0.1/8", roce=(), speed=None),), "netlink")
    head = plan_node(NodeRequest(iface="lo", node_ip="127.0.0.2", head_ip="127.0.0.2"), lo, {})
    worker = plan_node(NodeRequest(iface="lo", node_ip="127.0.0.3", head_ip="127.0.0.2"), lo, {})
    assert (head.role, head.cluster.node_ip) == ("head", "127.0.0.2")
    assert (worker.role, worker.cluster.node_ip, worker.cluster.head_ip) == ("worker", "127.0.0.3", "127.0.0.2")
    assert worker.network.env.as_dict()["VLLM_HOST_IP"] == "127.0.0.3"
    assert "NCCL_IB_HCA" not in worker.network.env.as_dict()  # no RoCE device: NCCL uses sockets


def test_node_ip_off_the_interface_subnet_is_refused(spark):
    with pytest.raises(errors.UsageError, match="not on enp1s0f1np1's subnet"):
        plan_node(NodeRequest(iface="enp1s0f1np1", node_ip="10.0.0.5"), spark, {})
    with pytest.raises(errors.UsageError, match="--node-ip 'x' is not an IPv4 address"):
        plan_node(NodeRequest(node_ip="x"), spark, {})


def test_run_record_state_and_wait_while_starting(tmp_path):
    rec = runstate.RunRecord(os.getpid(), "head", "192.168.100.10", "192.168.100.10:6379", "engine-starting")
    runstate.write_record(tmp_path, rec)
    assert runstate.read_record(tmp_path, rec.node_ip) == rec
    assert runstate.wait_while_starting(tmp_path, rec, timeout=0.3, poll=0.05).state == "engine-starting"
    runstate.write_record(tmp_path, dataclasses.replace(rec, state="serving"))
    assert runstate.wait_while_starting(tmp_path, rec, timeout=5, poll=0.05).state == "serving"
    assert [p.name for p in tmp_path.iterdir()] == ["node-192.168.100.10.json"]  # no temp file left


def test_nodes_first_seen_together_are_counted_one_by_one(caplog):
    """Attached to a formed cluster (`ray job submit`), both nodes are new at the first look."""
    from orchestrator.cluster.membership import log_changes

    one = ClusterState(parse_nodes([row("h", HEAD, head=True)]), 3)
    two = ClusterState(parse_nodes([row("h", HEAD, head=True), row("w", WORKER)]), 3)
    with caplog.at_level("INFO", logger="spark_vllm"):
        log_changes(None, two)
        log_changes(one, two)
    assert [r.getMessage() for r in caplog.records] == [
        f"node {HEAD} joined (1 GPU) - 1 of 3 GPU nodes", f"node {WORKER} joined (1 GPU) - 2 of 3 GPU nodes",
        f"node {WORKER} joined (1 GPU) - 2 of 3 GPU nodes"]
