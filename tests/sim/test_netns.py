"""The simulated Sparks themselves: names, cabling, fake sysfs, and teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.sim.namespaces import netns
from orchestrator.errors import SimulationError

from conftest import PREFIX

# Serves one connection on PORT and answers with its own address.
SERVER = ("import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
          "s.bind(('0.0.0.0',5055));s.listen();print('ready',flush=True);c,_=s.accept();"
          "c.sendall(sys.argv[1].encode());c.close()")
CLIENT = ("import socket,sys;s=socket.create_connection((sys.argv[1],5055),timeout=5);"
          "print(s.recv(64).decode())")


def tcp_reply(server: netns.SimNode, client: netns.SimNode, target_ip: str) -> str:
    """What `client` reads from a TCP server in `server`, connecting to `target_ip`."""
    srv = server.popen(sys.executable, "-c", SERVER, server.ip, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        r = client.run(sys.executable, "-c", CLIENT, target_ip, capture_output=True, text=True, timeout=20)
        return r.stdout.strip() or r.stderr.strip().splitlines()[-1]
    finally:
        srv.kill()
        srv.wait()


def test_pair_is_two_spark_ports_on_one_cable(pair):
    a, b = pair.nodes
    assert (a.iface, a.cidr, a.roce_device) == ("enp1s0f1np1", "192.168.100.10/24", "rocep1s0f1")
    assert (b.iface, b.cidr) == ("enp1s0f1np1", "192.168.100.11/24")
    assert a.netns != b.netns and a.netns.startswith(f"{PREFIX}-{os.getpid()}-")
    assert Path(a.sysfs_root, "class/net/enp1s0f1np1/speed").read_text().strip() == "200000"
    assert Path(a.sysfs_root, "class/infiniband/rocep1s0f1/device/net/enp1s0f1np1").is_dir()
    assert tcp_reply(b, a, b.ip) == "192.168.100.11"


def test_four_nodes_share_a_switch(netns_ok):
    with netns.SimNetwork(nodes=4, prefix=PREFIX) as net:
        assert [n.ip for n in net.nodes] == [f"192.168.100.{10 + i}" for i in range(4)]
        assert net.hub in netns.list_namespaces(net.tag)
        assert tcp_reply(net.nodes[3], net.nodes[0], "192.168.100.13") == "192.168.100.13"
        assert tcp_reply(net.nodes[1], net.nodes[2], "192.168.100.11") == "192.168.100.11"


def test_twin_and_management_ports(pair):
    twins = pair.add_twin()
    mgmt = pair.add_management()
    assert [t.cidr for t in twins] == ["192.168.101.10/24", "192.168.101.11/24"]
    assert twins[0].netns == pair.nodes[0].netns and twins[0].roce_device == "roceP2p1s0f1"
    assert mgmt[0].roce_device is None
    assert not Path(mgmt[0].sysfs_root, "class/infiniband", "enP7s7").exists()
    route = mgmt[0].run("ip", "route", "show", "default", capture_output=True, text=True).stdout
    assert "via 10.20.0.1 dev enP7s7" in route
    assert tcp_reply(twins[1], twins[0], "192.168.101.11") == "192.168.101.11"


def test_exit_kills_processes_and_removes_everything(netns_ok):
    with netns.SimNetwork(prefix=PREFIX, kill_grace_s=0.3) as net:
        namespaces, tmp = net.namespaces, Path(net.nodes[0].sysfs_root).parents[1]
        # One ignores SIGTERM: teardown must still get rid of it.
        stubborn = net.nodes[1].popen("bash", "-c", "trap '' TERM; sleep 300 & wait")
        sleeper = net.nodes[0].popen("sleep", "300")
        time.sleep(0.2)
    assert sleeper.wait(timeout=5) is not None and stubborn.wait(timeout=5) is not None
    assert not set(namespaces) & set(netns.list_namespaces(PREFIX))
    assert not tmp.exists()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_inside_still_tears_down(netns_ok, exc):
    with pytest.raises(type(exc)):
        with netns.SimNetwork(prefix=PREFIX) as net:
            namespaces = net.namespaces
            raise exc
    assert not set(namespaces) & set(netns.list_namespaces(PREFIX))


def test_cleanup_stale_removes_dead_runs_only(netns_ok):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_ns = f"{PREFIX}-{dead.pid}-abc123-n0"
    subprocess.run(["ip", "netns", "add", stale_ns], check=True)
    stale_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{dead.pid}-abc123-"))
    try:
        with netns.SimNetwork(prefix=PREFIX) as live:
            removed = netns.cleanup_stale(PREFIX)
            assert stale_ns in removed and str(stale_dir) in removed
            assert set(live.namespaces) <= set(netns.list_namespaces(PREFIX))
            assert Path(live.nodes[0].sysfs_root).is_dir()
    finally:
        if stale_ns in netns.list_namespaces(stale_ns):
            subprocess.run(["ip", "netns", "del", stale_ns])
    assert stale_ns not in netns.list_namespaces(PREFIX) and not stale_dir.exists()


def test_bad_arguments_are_refused_before_touching_the_system():
    with pytest.raises(SimulationError, match="prefix"):
        netns.SimNetwork(prefix="has-dash")
    with pytest.raises(SimulationError, match="at least one node"):
        netns.SimNetwork(nodes=0)


# --- the pyroute2 path (machines without iproute2, such as the GPU machine) ----------
@pytest.fixture
def pyroute2_ok(netns_ok):
    reason = netns.available("pyroute2")
    if reason:
        pytest.skip(reason)


def test_pyroute2_pair_with_its_own_sys_and_discovery(pyroute2_ok, cli):
    with netns.SimNetwork(nodes=2, prefix=PREFIX, mtu=9000, backend="pyroute2") as net:
        a, b = net.nodes
        namespaces = net.namespaces
        assert a.argv("true")[:2] == ["nsenter", f"--net=/var/run/netns/{a.netns}"]
        assert tcp_reply(b, a, b.ip) == "192.168.100.11"
        # /sys is the namespace's own (as under `ip netns exec`), not the host's.
        ls = a.run("ls", "/sys/class/net", capture_output=True, text=True)
        assert ls.stdout.split() == ["enp1s0f1np1", "lo"], ls.stderr
        out = json.loads(cli(b, "net", "--json").stdout)
        assert out["chosen"]["name"] == "enp1s0f1np1" and out["chosen"]["ipv4"] == "192.168.100.11"
        port = next(i for i in out["interfaces"] if i["name"] == "enp1s0f1np1")
        assert (port["mtu"], port["speed_mbps"], port["roce_devices"]) == (9000, 200000, ["rocep1s0f1"])
        net.set_link(a, up=False)  # settles through pyroute2's link table
        assert {name: state for name, _, state in net.ops.links(b.netns)}["enp1s0f1np1"] != "UP"
        net.set_link(a, up=True)
        assert netns.pids(a.netns) == []
    assert not set(namespaces) & set(netns.list_namespaces(PREFIX))


def test_pyroute2_switch_and_management(pyroute2_ok):
    with netns.SimNetwork(nodes=3, prefix=PREFIX, backend="pyroute2") as net:
        mgmt = net.add_management()
        assert tcp_reply(net.nodes[2], net.nodes[0], "192.168.100.12") == "192.168.100.12"
        assert tcp_reply(mgmt[1], mgmt[0], "10.20.0.11") == "10.20.0.11"
        sleeper = net.nodes[1].popen("sleep", "300")
        deadline = time.monotonic() + 5
        while not netns.pids(net.nodes[1].netns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in netns.pids(net.nodes[1].netns)  # nsenter/unshare/sh exec: the pid is sleep's
    assert sleeper.wait(timeout=5) is not None
