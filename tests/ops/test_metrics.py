"""Our Prometheus series from plain values, and through prometheus_client's exposition."""

from __future__ import annotations

import json
import re

import pytest

from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.cluster.nodes import ClusterState, NodeInfo
from orchestrator.ops.observation.metrics import Poller, ServingState, SparkCollector, samples

from conftest import REPO

CLUSTER = ClusterState((NodeInfo("a", "192.168.100.10", True, 1, True), NodeInfo("b", "192.168.100.11", True, 1, False),
                        NodeInfo("c", "192.168.100.11", False, 1, False)), want=2)


def test_samples_from_plain_values(make_iface):
    state = ServingState()
    state.phase("cluster", 12.5)
    state.engine_restarted()
    got = {(s.name, s.labels): s.value for s in samples(state, CLUSTER, make_iface(speed=200000))}
    assert got[("nodes_alive", ())] == 2 and got[("gpus", ())] == 2 and got[("nodes_wanted", ())] == 2
    assert got[("fabric_link_up", (("iface", "enp1s0f1np1"),))] == 1.0
    assert got[("fabric_link_speed_bits_per_second", (("iface", "enp1s0f1np1"),))] == 2e11
    assert got[("phase_duration_seconds", (("phase", "cluster"),))] == 12.5
    assert got[("engine_restarts", (("cause", "node-lost"),))] == 1
    assert got[("engine_restarts", (("cause", "wedged"),))] == 0 and ("node_loss_detection_seconds", ()) not in got
    state.node_lost(4.2)
    state.wedged("probe")
    state.engine_restarted("wedged")
    state.probed()
    down = {(s.name, s.labels): s.value for s in samples(state, None, make_iface(up=False, speed=None))}
    assert down == {("fabric_link_up", (("iface", "enp1s0f1np1"),)): 0.0,
                    ("phase_duration_seconds", (("phase", "cluster"),)): 12.5,
                    ("engine_restarts", (("cause", "node-lost"),)): 1, ("engine_restarts", (("cause", "wedged"),)): 1,
                    ("engine_wedges", (("cause", "stall"),)): 0, ("engine_wedges", (("cause", "probe"),)): 1,
                    ("watchdog_probes", ()): 1, ("node_loss_detection_seconds", ()): 4.2}


def test_exposition_and_a_failing_reader(make_iface):
    registry = CollectorRegistry()

    def broken():
        raise ConnectionError("GCS gone")

    registry.register(SparkCollector(ServingState(), broken, lambda: make_iface()))
    text = generate_latest(registry).decode()
    assert 'spark_vllm_fabric_link_up{iface="enp1s0f1np1"} 1.0' in text
    assert 'spark_vllm_engine_restarts_total{cause="wedged"} 0.0' in text and "# TYPE spark_vllm_engine_restarts_total counter" in text
    assert "spark_vllm_nodes_alive" not in text  # the cluster could not be read: no stale value


def test_grafana_dashboard_uses_only_series_that_exist(make_iface):
    """Every spark_vllm_* series the dashboard queries is one the collector exports."""
    dash = json.loads((REPO / "docs" / "grafana-spark-vllm.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"spark_vllm_\w+", t["expr"])}
    state = ServingState()
    state.phase("cluster", 1)
    state.node_lost(1)
    exported = {"spark_vllm_" + s.name + ("_total" if s.kind == "counter" else "")
                for s in samples(state, CLUSTER, make_iface())}
    assert used and used <= exported, used - exported


def test_poller_serves_fresh_values_only():
    now = [0.0]
    values = iter([CLUSTER, ConnectionError("GCS gone")])

    def read():
        v = next(values)
        if isinstance(v, Exception):
            raise v
        return v

    p = Poller(read, stale=30, clock=lambda: now[0])
    with pytest.raises(LookupError):
        p.latest()  # nothing read yet
    p.poll_once()
    assert p.latest() is CLUSTER
    p.poll_once()  # the GCS went away: the last good value stays until it is stale
    now[0] = 10
    assert p.latest() is CLUSTER
    now[0] = 31
    with pytest.raises(ConnectionError):
        p.latest()
