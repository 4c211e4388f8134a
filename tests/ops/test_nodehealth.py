"""The HEALTHCHECK's decision, with plain run records."""

from orchestrator.cluster.runstate import RunRecord
from orchestrator.ops.supervision.nodehealth import judge


def rec(role="worker", state="running"):
    return RunRecord(pid=42, role=role, node_ip="192.168.100.11", gcs_address="192.168.100.10:6379", state=state)


def test_no_node_is_unhealthy():
    assert judge([], None).healthy is False


def test_a_running_worker_is_healthy_without_a_server():
    h = judge([rec()], None)
    assert h.healthy and "worker on 192.168.100.11 is up" in h.reason


def test_a_serving_head_follows_its_server():
    assert judge([rec("head", "serving")], "healthy").healthy is True
    bad = judge([rec("head", "serving")], "unhealthy (HTTP 503)")
    assert not bad.healthy and "503" in bad.reason


def test_an_engine_still_starting_is_not_healthy_yet():
    assert judge([rec("head", "engine-starting")], None).healthy is False


def test_a_wedged_or_restarting_engine_is_not_healthy():
    wedged, restarting = judge([rec("head", "wedged")], None), judge([rec("head", "restarting")], None)
    assert not wedged.healthy and "wedged and is being ended on every node" in wedged.reason
    assert not restarting.healthy and "restarting" in restarting.reason


def test_start_summary_sources():
    from orchestrator.settings import Settings

    s = Settings.from_env({"SPARK_VLLM_HEAD_IP": "192.168.100.10", "SPARK_VLLM_MODEL": "Qwen/Qwen3-8B"})
    got = s.sources({"model": "Qwen/Qwen3-8B", "head_ip": "192.168.100.10", "iface": "enp1s0f1np1",
                     "node_ip": None, "simulate": False})
    assert got == [("model", "Qwen/Qwen3-8B", "env"), ("head_ip", "192.168.100.10", "env"),
                   ("iface", "enp1s0f1np1", "flag"), ("node_ip", None, "default"), ("simulate", False, "default")]
