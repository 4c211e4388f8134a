"""The fabric test's pure parts: sizes, bandwidth arithmetic, the verdict."""

from __future__ import annotations

import pytest

from orchestrator.cluster.nodes import ClusterState, NodeInfo
from orchestrator.errors import FabricTestFailed, UsageError
from orchestrator.ops.diagnosis import fabric
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
