"""The doctor's checks over plain Facts: each failure it must catch, and its fix."""

from __future__ import annotations

import pytest

from orchestrator.net.discovery import Discovery
from orchestrator.ops.diagnosis import checks as c
from orchestrator.ops.diagnosis.facts import Facts, Gpu, Listener, ModelFacts, parse_meminfo, parse_nvidia_smi

GIB = 1 << 30


@pytest.fixture
def spark(make_iface):
    return Discovery((make_iface("enp1s0f1np1", "192.168.100.11/24", mtu=9000),
                      make_iface("enP2p1s0f1np1", "192.168.101.11/24", roce="roceP2p1s0f1", mtu=9000)), "netlink")


def facts(discovery, **kw) -> Facts:
    base = dict(discovery=discovery, machine="aarch64", meminfo={"MemTotal": 128 << 20, "MemAvailable": 100 << 20,
                                                                   "MemFree": 90 << 20})
    return Facts(**{**base, **kw})


def test_a_healthy_worker_passes(spark):
    f = facts(spark, head_ip="192.168.100.10", peer="open", peer_mss=8948,
              gpus=(Gpu("NVIDIA GB10", "580.95.05", "12.1"),), driver_cuda="13.0", torch_cuda="13.0",
              token_file="/t", token_present=True)
    got = {x.name: x for x in c.run_checks(f)}
    assert {n for n, x in got.items() if x.status in (c.FAIL, c.WARN)} == set()
    assert got["MTU"].detail == "MTU 9000 on both ends"
    assert got["GPUs"].detail == "1 x NVIDIA GB10, driver 580.95.05, CUDA 13.0"
    assert "enp1s0f1np1 up, 192.168.100.11, rocep1s0f1" in got["fabric port"].detail


def test_twin_on_the_same_subnet_is_the_twin_confusion(make_iface):
    d = Discovery((make_iface("enp1s0f1np1", "192.168.100.11/24"),
                   make_iface("enP2p1s0f1np1", "192.168.100.21/24", roce="roceP2p1s0f1")), "netlink")
    got = c.twin_subnets(facts(d))
    assert got.status == c.FAIL and "twin-subnet confusion" in got.detail and "192.168.101" in got.fix


def test_mtu_differs(spark):
    got = c.mtu(facts(spark, head_ip="192.168.100.10", peer="open", peer_mss=1448))
    assert got.status == c.FAIL and "MTU 9000 here but about 1500" in got.detail and "mtu" in got.fix
    assert c.mtu(facts(spark, head_ip="192.168.100.10", peer="open", peer_mss=8960)).status == c.PASS


@pytest.mark.parametrize("avail, free, status", [(100, 90, c.PASS), (100, 10, c.WARN), (20, 10, c.FAIL)])
def test_memory_against_the_model(spark, avail, free, status):
    model = ModelFacts("big", False, True, 100 * GIB, False)  # 60 GiB a node with TP over 2
    got = c.memory(facts(spark, model=model, meminfo={"MemAvailable": avail << 20, "MemFree": free << 20}))
    assert got.status == status
    if status == c.WARN:
        assert "drop_caches" in got.fix and "--drop-caches" in got.fix and got.playbook == c.ROW_OOM


def test_gated_model_without_a_token(spark):
    gated = ModelFacts("meta-llama/Llama-3.1-70B", False, False, None, True)
    got = c.hf_token(facts(spark, model=gated, hf_token=False))
    assert got.status == c.FAIL and got.playbook == c.ROW_GATED and "HF_TOKEN" in got.fix
    assert c.hf_token(facts(spark, model=gated, hf_token=True)).status == c.PASS
    unknown = ModelFacts("org/m", False, False, None, None)
    assert c.hf_token(facts(spark, model=unknown)).status == c.WARN


def test_disk_too_small_for_the_download(spark):
    model = ModelFacts("org/m", False, False, 60 * GIB, False)
    assert c.disk(facts(spark, model=model, disk_free_bytes=30 * GIB)).status == c.FAIL
    assert c.disk(facts(spark, disk_free_bytes=5 * GIB)).status == c.WARN
    assert c.disk(facts(spark, disk_free_bytes=500 * GIB)).status == c.PASS


def test_docker_group_step(spark):
    got = c.docker(facts(spark, docker_socket="/var/run/docker.sock", docker_access=False))
    assert got.status == c.FAIL and "usermod -aG docker" in got.fix and got.playbook == c.ROW_DOCKER
    relog = c.docker(facts(spark, docker_socket="/s", docker_access=False, docker_group_member=True))
    assert relog.status == c.FAIL and "log in again" in relog.fix
    assert c.docker(facts(spark, docker_socket="/s", docker_access=True)).status == c.PASS


def test_gpus_and_cuda(spark):
    assert c.gpus(facts(spark, gpus=None)).status == c.FAIL
    gpu = (Gpu("NVIDIA GB10", "580"),)
    old = c.cuda_versions(facts(spark, gpus=gpu, driver_cuda="12.8", torch_cuda="13.0"))
    assert old.status == c.FAIL and old.playbook == c.ROW_CUDA
    assert c.cuda_versions(facts(spark, gpus=gpu, driver_cuda="13.0", torch_cuda=None)).status == c.WARN
    assert c.gpus(facts(spark, gpus=None, simulate=True)).status == c.SKIP


def test_nvidia_smi_and_meminfo_parsing():
    gpus, cuda = parse_nvidia_smi("NVIDIA GB10, 580.95.05, 12.1\n",
                                  "| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: 13.0 |")
    assert gpus == (Gpu("NVIDIA GB10", "580.95.05", "12.1"),) and cuda == "13.0"
    assert parse_meminfo("MemTotal:  131072 kB\nMemFree: 5 kB\nHugePages_Total: 0\n") == \
        {"MemTotal": 131072, "MemFree": 5, "HugePages_Total": 0}


def test_ports_busy_and_architecture(spark):
    got = c.ray_ports(facts(spark, ports_busy={6379: "redis-server"}))
    assert got.status == c.FAIL and "6379 (redis-server)" in got.detail
    assert c.ray_ports(facts(spark, ports_busy={6379: "gcs_server"}, own_node_running=True)).status == c.SKIP
    x86 = c.architecture(facts(spark, machine="x86_64"))
    assert x86.status == c.WARN and x86.playbook == c.ROW_ARM


def test_cluster_checks(spark):
    up = dict(cluster_up=True, head_ip="192.168.100.10")
    missing = c.cluster_nodes(facts(spark, cluster_nodes=1, **up))
    assert missing.status == c.FAIL and missing.playbook == c.ROW_NODE2
    skew = c.versions_equal(facts(spark, versions={"a": {"vllm": "1"}, "b": {"vllm": "2"}}, **up))
    assert skew.status == c.FAIL and "vllm" in skew.detail
    assert c.versions_equal(facts(spark, versions={"a": {"vllm": "1"}, "b": {"vllm": "1"}}, **up)).status == c.PASS
    assert c.server(facts(spark, server_health="not running")).playbook == c.ROW_API


def test_exposure(spark):
    up = dict(cluster_up=True)
    wide = (Listener("0.0.0.0", 8265, "python"),)
    assert c.exposure(facts(spark, listeners=wide, **up)).status == c.FAIL
    gcs = (Listener("0.0.0.0", 6379, "gcs_server"), Listener("192.168.100.11", 8265, "python"))
    assert c.exposure(facts(spark, listeners=gcs, **up)).status == c.PASS
    no_auth = c.exposure(facts(spark, listeners=gcs, auth_enabled=False, **up))
    assert no_auth.status == c.FAIL and "--no-auth" in no_auth.fix


def test_ray_token(spark):
    worker = dict(head_ip="192.168.100.10", token_file="/t")
    got = c.ray_token(facts(spark, token_present=False, cluster_up=True, **worker))
    assert got.status == c.FAIL and "scp HEAD:/t /t" in got.fix
    assert c.ray_token(facts(spark, token_file="/t", token_present=False)).status == c.PASS  # the head makes it
    assert c.ray_token(facts(spark, auth_enabled=False)).status == c.WARN


def test_every_check_names_a_fix_when_it_fails(spark):
    """No fail/warn without a one-line fix, in any check, on a machine where all goes wrong."""
    f = Facts(discovery=None, discovery_error="netlink closed", head_ip="192.168.100.10", gpus=None,
              meminfo={"MemAvailable": 1, "MemFree": 1}, model=ModelFacts("org/m", False, False, 10 * GIB, True),
              disk_free_bytes=1, ports_busy={6379: "x"}, docker_socket="/s", token_file="/t", cluster_up=True,
              cluster_nodes=0, machine="x86_64")
    bad = [x for x in c.run_checks(f) if x.status in (c.FAIL, c.WARN)]
    assert len(bad) >= 8 and all(x.fix and "\n" not in x.fix for x in bad)


# --- the fabric as NCCL sees it (issue 20) ------------------------------------------------
def test_mtu_below_9000_warns(make_iface):
    d = Discovery((make_iface("enp1s0f1np1", "192.168.100.11/24", mtu=1500),), "netlink")
    got = c.jumbo_mtu(facts(d))
    assert got.status == c.WARN and "MTU 1500" in got.detail and "mtu: 9000" in got.fix


def recorded_check(busbw: float, backend: str = "nccl") -> dict:
    return {"backend": backend, "busbw_gbps": busbw, "peak_size": 256 << 20, "transports": {"a": "NET/IB"},
            "status": "below", "level": "warn", "message": "", "link_speed_mbps": 200000}


def test_measured_bandwidth_far_below_the_negotiated_speed(spark):
    got = c.measured_bandwidth(facts(spark, fabric_check=recorded_check(1.6)))  # 13 Gb/s on a 200 Gb/s link
    assert got.status == c.WARN and "1.60 GB/s" in got.detail and "negotiated 200 Gb/s" in got.detail
    assert "6%" in got.detail and "NCCL_IB_HCA" in got.fix and "MTU 9000" in got.fix
    assert c.measured_bandwidth(facts(spark, fabric_check=recorded_check(23.7))).status == c.PASS
    assert c.measured_bandwidth(facts(spark, fabric_check=recorded_check(0.4, "gloo"))).status == c.SKIP
    assert c.measured_bandwidth(facts(spark)).status == c.SKIP  # no check recorded


def test_nccl_library_reported(spark):
    from orchestrator.cluster.nccl import NcclBuild, NcclReport

    pip = NcclBuild("/venv/nvidia/nccl/lib/libnccl.so.2", "2.28.9+cuda13.0", "a" * 64)
    dgx = NcclBuild("/usr/lib/aarch64-linux-gnu/libnccl.so.2", "2.28.9+cuda13.0", "b" * 64)
    got = c.nccl_library(facts(spark, nccl=NcclReport("13.0", pip, "shared", others=(dgx,)).to_json()))
    assert got.status == c.PASS and "torch loads NCCL 2.28.9+cuda13.0 (/venv/nvidia" in got.detail
    assert "also has 2.28.9+cuda13.0 (/usr/lib/aarch64-linux-gnu/libnccl.so.2, sha256 bbbbbbbbbbbb)" in got.detail
    assert "--nccl-library" in got.fix
    cpu = c.nccl_library(facts(spark, nccl=NcclReport(None).to_json()))
    assert cpu.status == c.SKIP and cpu.detail == "torch is a CPU build: no NCCL"
    lost = c.nccl_library(facts(spark, nccl=NcclReport("13.0", None, "unknown").to_json()))
    assert lost.status == c.WARN
