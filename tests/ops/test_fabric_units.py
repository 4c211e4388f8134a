"""The fabric test's pure parts: sizes, bandwidth arithmetic, the verdict."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from launch.exitcodes import exit_code_for
from orchestrator.cluster.nodes import ClusterState, NodeInfo
from orchestrator.errors import FabricRefused, FabricTestFailed, UsageError
from orchestrator.ops.diagnosis import fabric, fabriccheck
from orchestrator.ops.diagnosis.fabric import Measurement


@pytest.mark.parametrize("text,want", [("4", 4), ("4K", 4096), ("64M", 64 << 20), ("1g", 1 << 30), ("256MiB", 256 << 20)])
def test_parse_size(text, want):
    assert fabric.parse_size(text) == want
    assert fabric.parse_size(fabric.size_label(want)) == want


@pytest.mark.parametrize("text", ["", "2", "1T", "-1M", "M"])
def test_bad_sizes_are_usage_errors(text):
    with pytest.raises(UsageError):
        fabric.parse_size(text)


def test_bus_bandwidth_is_nccl_tests_definition():
    m = Measurement(256 << 20, 0.01)  # 268 MB in 10 ms
    assert m.algbw() == pytest.approx(26.8435456)
    assert m.busbw(2) == pytest.approx(m.algbw())  # 2(n-1)/n = 1 for two nodes
    assert m.busbw(4) == pytest.approx(m.algbw() * 1.5)
    assert fabric.bus_factor(1) == 0.0


def test_slowest_rank_decides():
    rows = fabric.combine([[1.0, 2.0], [1.5, 1.0]], (4, 8))
    assert [(r.size_bytes, r.seconds) for r in rows] == [(4, 1.5), (8, 2.0)]


def rows_at(busbw: float) -> tuple[Measurement, ...]:
    return (Measurement(1 << 20, 1.0), Measurement(10**9, 1 / busbw))  # two nodes: busbw = algbw


def test_verdict_against_a_spark_link():
    ok = fabric.verdict(rows_at(23.0), 2, "nccl", 200000)
    assert (ok.status, ok.link_gbps, ok.healthy_busbw) == ("healthy", 25.0, 22.0)
    assert ok.peak_busbw == pytest.approx(23.0)
    slow = fabric.verdict(rows_at(2.5), 2, "nccl", 200000)
    assert slow.status == "below" and "NCCL_IB_HCA" in slow.note and "22" in slow.note
    assert fabric.verdict(rows_at(2.5), 2, "nccl", None).status == "unknown"
    assert fabric.verdict(rows_at(50.0), 2, "gloo", 200000).status == "not-comparable"


def test_backend_choice():
    assert fabric.pick_backend("auto", [True, True]) == "nccl"
    assert fabric.pick_backend("auto", [True, False]) == "gloo"
    assert fabric.pick_backend("gloo", [True, True]) == "gloo"
    with pytest.raises(UsageError):
        fabric.pick_backend("nccl", [True, False])


def node(ip: str, head: bool = False, gpus: float = 1, alive: bool = True) -> NodeInfo:
    return NodeInfo(node_id=ip, ip=ip, alive=alive, gpus=gpus, head=head)


def test_ranks_head_first_gpu_nodes_only():
    state = ClusterState((node("10.0.0.3"), node("10.0.0.2", gpus=0), node("10.0.0.9", head=True),
                          node("10.0.0.1", alive=False)), 2)
    assert [n.ip for n in fabric.ranks_of(state)] == ["10.0.0.9", "10.0.0.3"]
    with pytest.raises(FabricTestFailed, match="two GPU nodes"):
        fabric.ranks_of(ClusterState((node("10.0.0.9", head=True),), 2))


def test_report_json():
    rows = (Measurement(1 << 20, 0.001),)
    report = fabric.FabricReport("nccl", 2, ("a", "b"), "a", rows, fabric.verdict(rows, 2, "nccl", 200000), ())
    out = report.to_json()
    assert out["results"] == [{"size_bytes": 1 << 20, "size": "1M", "time_us": 1000.0,
                               "algbw_gbps": 1.049, "busbw_gbps": 1.049}]
    assert out["verdict"]["status"] == "below"


@pytest.mark.parametrize("argv,words", [
    (["--iters", "0"], "need iters >= 1"),
    (["--sizes", "1T"], "not a byte count"),
    (["--sizes", ","], "names no size"),
])
def test_bad_options_fail_before_touching_ray(argv, words, capsys):
    from launch.cli import main

    assert main(["fabric-test", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spark-vllm: error: ") and words in err[0]


def test_no_cluster_is_one_line_and_exit_4(capsys):
    from launch.cli import main

    # 127.0.0.1 on a port nothing listens on: refused at once, before ray.init
    code = main(["fabric-test", "--iface", "lo", "--head-ip", "127.0.0.1", "--ray-port", "9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and err[-1].startswith("spark-vllm: error: no Ray cluster answers at 127.0.0.1:9")


# --- NCCL's own report and serve's verdict -----------------------------------------------
# NCCL 2.28's INFO lines, as the GPU run captured them (docs/gpu-run/step1.json) and as
# NET/IB prints them on RoCE.
SOCKET_LINES = [
    "vm:1096:1096 [0] NCCL INFO NCCL version 2.28.9+cuda13.0",
    "vm:1096:1096 [0] NCCL INFO NET/IB : No device found.",
    "vm:1096:1096 [0] NCCL INFO NET/Socket : Using [0]enp1s0f1np1:192.168.100.10<0>",
    "vm:1096:1096 [0] NCCL INFO Using network Socket",
    "vm:1096:1096 [0] NCCL INFO comm 0x3c2193a0 rank 0 nRanks 2 nNodes 2 localRanks 1 localRank 0 MNNVL 0",
    "vm:1096:1096 [0] NCCL INFO Channel 00/0 : 1[1] -> 0[0] [receive] via NET/Socket/0",
    "vm:1096:1096 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] [send] via NET/Socket/0",
]
IB_LINES = [
    "spark1:2211:2211 [0] NCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE [1]roceP2p1s0f1:1/RoCE [RO]; "
    "OOB enp1s0f1np1:192.168.100.10<0>",
    "spark1:2211:2211 [0] NCCL INFO Using network IB",
    "spark1:2211:2211 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [receive] via NET/IB/0",
    "spark1:2211:2211 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[0] [send] via NET/IB/1",
]


def test_transport_read_from_nccls_lines():
    assert fabric.transport_of(SOCKET_LINES) == "NET/Socket"
    assert fabric.transport_of(IB_LINES) == "NET/IB"
    assert fabric.transport_of(["x NCCL INFO Using network IB"]) == "NET/IB"  # no channel lines yet
    assert fabric.transport_of([]) is None
    noise = "x NCCL INFO cudaDriverVersion 13000"
    assert fabric.nccl_lines("\n".join([noise, *SOCKET_LINES, "unrelated"])) == SOCKET_LINES


def report_of(busbw: float, backend: str = "nccl", lines=IB_LINES, env=None, speed=200000):
    rows = rows_at(busbw)
    env = {"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1"} if env is None else env
    ranks = tuple({"rank": r, "ip": ip, "env": env, "nccl_report": lines,
                   "transport": fabric.transport_of(lines) if backend == "nccl" else "gloo/TCP"}
                  for r, ip in enumerate(("192.168.100.10", "192.168.100.11")))
    return fabric.FabricReport(backend, 2, ("a", "b"), "a", rows, fabric.verdict(rows, 2, backend, speed), ranks)


def test_healthy_roce_fabric_passes():
    c = fabriccheck.judge(report_of(23.7), None, "enp1s0f1np1")
    assert (c.status, c.level, c.busbw_gbps, c.healthy_gbps) == ("healthy", "info", 23.7, 22.0)
    assert dict(c.transports) == {"192.168.100.10": "NET/IB", "192.168.100.11": "NET/IB"}
    assert c.line().startswith("23.70 GB/s all-reduce bus bandwidth (1000000000B, nccl: 192.168.100.10 NET/IB")
    fabriccheck.enforce(c)  # no error


def test_below_the_health_line_warns_with_the_likely_fixes():
    c = fabriccheck.judge(report_of(3.1), None)
    assert (c.status, c.level) == ("below", "warn")
    for fix in ("NCCL_IB_HCA", "MTU 9000", "cable", "NCCL build"):
        assert fix in c.message and fix in c.hint
    fabriccheck.enforce(c)  # a warning, not a refusal


def test_min_fabric_gbps_turns_it_into_a_refusal():
    c = fabriccheck.judge(report_of(3.1), 20.0)
    assert (c.status, c.level) == ("refused", "error")
    with pytest.raises(FabricRefused, match=r"3.10 GB/s .* below --min-fabric-gbps 20") as info:
        fabriccheck.enforce(c)
    assert exit_code_for(info.value) == 19
    assert fabriccheck.judge(report_of(23.7), 20.0).status == "healthy"


def test_nccl_on_sockets_over_roce_is_an_error_naming_cause_and_fix():
    c = fabriccheck.judge(report_of(1.8, lines=SOCKET_LINES), None)
    assert (c.status, c.level) == ("sockets", "error")
    assert "NET/Socket on 192.168.100.10, 192.168.100.11" in c.message and "rocep1s0f1,roceP2p1s0f1" in c.message
    assert "NET/IB : No device found." in c.message  # NCCL's own reason
    assert "/dev/infiniband" in c.hint and "--no-fabric-check" in c.hint
    with pytest.raises(FabricRefused):
        fabriccheck.enforce(c)


def test_sockets_chosen_by_the_user_or_without_roce_only_warn():
    disabled = {"NCCL_IB_HCA": "rocep1s0f1", "NCCL_IB_DISABLE": "1"}  # the GPU simulation's veth
    assert fabriccheck.judge(report_of(1.8, lines=SOCKET_LINES, env=disabled), None).status == "below"
    assert fabriccheck.judge(report_of(1.8, lines=SOCKET_LINES, env={}), None).status == "below"


def test_gloo_reports_the_figure_without_a_verdict():
    c = fabriccheck.judge(report_of(0.4, backend="gloo", lines=[]), None)
    assert (c.status, c.level, c.busbw_gbps) == ("not-comparable", "info", 0.4)
    assert dict(c.transports) == {"192.168.100.10": "gloo/TCP", "192.168.100.11": "gloo/TCP"}
    # an explicit minimum still applies (the simulated serve can be refused)
    assert fabriccheck.judge(report_of(0.4, backend="gloo", lines=[]), 1000.0).status == "refused"


def test_check_round_trips_through_the_run_record(tmp_path):
    from orchestrator.cluster import runstate

    c = fabriccheck.judge(report_of(23.7), None, "enp1s0f1np1", 2.5, 1.0)
    assert fabriccheck.FabricCheck.from_json(json.loads(json.dumps(c.to_json()))) == c
    rec = runstate.RunRecord(os.getpid(), "head", "192.168.100.10", "192.168.100.10:6379")
    runstate.write_record(tmp_path, rec)
    runstate.record_fabric(tmp_path, rec.node_ip, c.to_json())
    runstate.write_record(tmp_path, dataclasses.replace(rec, state="serving"))  # as mark() does
    kept = runstate.read_record(tmp_path, rec.node_ip)
    assert kept.state == "serving" and fabriccheck.FabricCheck.from_json(kept.fabric) == c
    runstate.write_record(tmp_path, dataclasses.replace(rec, pid=rec.pid + 1))  # another process: not its check
    assert runstate.read_record(tmp_path, rec.node_ip).fabric is None
    assert fabriccheck.status_line(None).startswith("not checked")


def test_check_in_the_metrics():
    from orchestrator.ops.observation import metrics

    state = metrics.ServingState()
    state.fabric_checked(fabriccheck.judge(report_of(23.7), None, seconds=2.5))
    got = {(s.name, s.labels): s.value for s in metrics.samples(state, None, None)}
    assert got[("fabric_bus_bandwidth_bytes_per_second", (("backend", "nccl"), ("verdict", "healthy")))] == 23.7e9
    assert got[("fabric_transport", (("node", "192.168.100.11"), ("transport", "NET/IB")))] == 1.0
    assert got[("phase_duration_seconds", (("phase", "fabric_check"),))] == 2.5


def test_serve_skips_the_check_when_asked_or_alone(caplog):
    """Neither path touches Ray: --no-fabric-check, and a one-node cluster (no fabric)."""
    import argparse
    import logging

    from launch.fabriccmd import check_before_serving

    caplog.set_level(logging.INFO, logger="spark_vllm")
    args = argparse.Namespace(no_fabric_check=True, min_fabric_gbps=5.0)
    assert check_before_serving(args, None, None, None) is None
    alone = ClusterState((node("10.0.0.9", head=True),), 1)
    assert check_before_serving(argparse.Namespace(no_fabric_check=False, min_fabric_gbps=5.0), None, None,
                                alone) is None
    assert "skipped (--no-fabric-check)" in caplog.text and "one GPU node" in caplog.text
