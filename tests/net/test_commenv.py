"""plan_environment / apply_plan / shell_lines over plain values."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator.net.commenv import apply_plan, plan_environment, shell_lines
from orchestrator.net.discovery import Discovery
from orchestrator.net.plan import plan_network
from orchestrator.net.selection import choose_interface

from conftest import COMM_VARS


@pytest.fixture
def ports(make_iface):
    return (
        make_iface("enp1s0f1np1", "192.168.100.11/24", roce="rocep1s0f1"),
        make_iface("enP2p1s0f1np1", "192.168.101.11/24", roce="roceP2p1s0f1"),
        make_iface("enP7s7", "10.20.0.11/24", roce=()),
    )


def plan(ports, environ=None, **kw):
    choice = choose_interface(ports, iface=kw.pop("iface", None), head_ip=kw.get("head_ip"))
    return plan_environment(choice, ports, environ or {}, **kw)


def test_every_variable_the_playbook_exports(ports):
    p = plan(ports, head_ip="192.168.100.10")
    assert p.as_dict() == {
        "VLLM_HOST_IP": "192.168.100.11",
        "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
        "GLOO_SOCKET_IFNAME": "enp1s0f1np1",
        "TP_SOCKET_IFNAME": "enp1s0f1np1",
        "UCX_NET_DEVICES": "enp1s0f1np1",
        "OMPI_MCA_btl_tcp_if_include": "enp1s0f1np1",
        "MASTER_ADDR": "192.168.100.10",
        "RAY_memory_monitor_refresh_ms": "0",
        "RAY_worker_niceness": "0",
        "NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1",
        "NCCL_IB_GID_INDEX": "3",
    }
    assert set(p.as_dict()) == set(COMM_VARS)
    assert all(v.source == "spark-vllm" and v.why for v in p.variables)
    assert p.notes == ()


def test_head_node_is_its_own_master(ports):
    assert plan(ports).as_dict()["MASTER_ADDR"] == "192.168.100.11"


def test_hca_list_only_has_up_ports(make_iface):
    ports = (make_iface(), make_iface("enP2p1s0f1np1", "192.168.101.10/24", roce="roceP2p1s0f1", up=False))
    assert plan(ports).as_dict()["NCCL_IB_HCA"] == "rocep1s0f1"


def test_no_up_roce_device_means_sockets_and_a_note(make_iface):
    ports = (make_iface(up=False), make_iface("enP7s7", "10.20.0.10/24", roce=()))
    p = plan(ports, iface="enP7s7")
    assert "NCCL_IB_HCA" not in p.as_dict()
    assert p.as_dict()["NCCL_SOCKET_IFNAME"] == "enP7s7"
    assert any("NCCL_IB_HCA not set" in n for n in p.notes)


def test_user_value_is_kept_and_reported(ports):
    p = plan(ports, {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "enp1s0f1np1"})
    nccl = next(v for v in p.variables if v.name == "NCCL_SOCKET_IFNAME")
    gloo = next(v for v in p.variables if v.name == "GLOO_SOCKET_IFNAME")
    assert (nccl.value, nccl.planned, nccl.source, nccl.overridden) == ("eth0", "enp1s0f1np1", "user", True)
    assert (gloo.source, gloo.overridden) == ("user", False)
    assert len(p.notes) == 1  # the same value as planned is not worth a note
    assert "NCCL_SOCKET_IFNAME=eth0" in p.notes[0] and "--force" in p.notes[0]
    assert "NCCL_SOCKET_IFNAME" not in p.to_set() and p.to_set()["TP_SOCKET_IFNAME"] == "enp1s0f1np1"


def test_force_overrides_user_values(ports):
    p = plan(ports, {"NCCL_SOCKET_IFNAME": "eth0", "VLLM_HOST_IP": "10.0.0.1"}, force=True)
    assert p.as_dict()["NCCL_SOCKET_IFNAME"] == "enp1s0f1np1"
    assert p.as_dict()["VLLM_HOST_IP"] == "192.168.100.11"
    assert p.notes == ()


def test_apply_writes_only_what_spark_vllm_sets(ports):
    environ = {"NCCL_SOCKET_IFNAME": "eth0", "PATH": "/bin"}
    apply_plan(plan(ports, environ), environ)
    assert environ["NCCL_SOCKET_IFNAME"] == "eth0" and environ["PATH"] == "/bin"
    assert environ["GLOO_SOCKET_IFNAME"] == "enp1s0f1np1"
    assert environ["RAY_memory_monitor_refresh_ms"] == "0"


def test_extra_settings_join_the_plan(ports):
    p = plan(ports, extra={"RAY_USAGE_STATS_ENABLED": "0"})
    assert p.as_dict()["RAY_USAGE_STATS_ENABLED"] == "0"


def test_shell_lines_survive_bash_eval(ports):
    odd = "it's a $HOME `x` \"y\" value"
    p = plan(ports, {"UCX_NET_DEVICES": odd})
    script = "\n".join(shell_lines(p)) + '\nprintf "%s\\n" "$UCX_NET_DEVICES" "$VLLM_HOST_IP" "$NCCL_IB_HCA"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={}, check=True).stdout
    assert out.splitlines() == [odd, "192.168.100.11", "rocep1s0f1,roceP2p1s0f1"]


def test_plan_network_ties_it_together(ports):
    net = plan_network(Discovery(ports, "netlink"), {}, head_ip=" 192.168.101.10")
    assert net.choice.name == "enP2p1s0f1np1" and net.node_ip == "192.168.101.11"
    assert net.head_ip == "192.168.101.10"
    assert net.env.as_dict()["GLOO_SOCKET_IFNAME"] == "enP2p1s0f1np1"


def test_json_form_names_source_and_reason(ports):
    j = plan(ports, {"MASTER_ADDR": "1.2.3.4"}).to_json()
    master = next(v for v in j["variables"] if v["name"] == "MASTER_ADDR")
    assert master == {"name": "MASTER_ADDR", "value": "1.2.3.4", "planned": "192.168.100.11",
                      "source": "user", "why": "the head's address"}
    assert len(j["notes"]) == 1
