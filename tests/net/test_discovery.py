"""Discovery over real netlink in simulated Sparks, the sysfs RoCE map, and the
netifaces fallback (netlink refused through the `open_netlink` seam)."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

from orchestrator.sim.namespaces import netns
from orchestrator.net.discovery import build_interfaces, discover, is_up, roce_map
from orchestrator.errors import DiscoveryError, InterfaceDown
from orchestrator.net.selection import choose_interface


def deny_netlink(netns):
    """What opening AF_NETLINK raises in a sandbox that forbids it."""
    raise PermissionError(errno.EPERM, "Operation not permitted (AF_NETLINK)")


def read(node: netns.SimNode, iface: str | None = None):
    found = discover(node.sysfs_root, netns=node.netns)
    return found, found.by_name(iface or node.iface)


# --- netlink, in namespaces ------------------------------------------------------
def test_spark_port_with_roce_speed_and_mtu(pair):
    found, port = read(pair.nodes[0])
    assert found.source == "netlink" and found.notes == ()
    assert port.up and port.state == "UP"
    assert port.ipv4 == ("192.168.100.10/24",)
    assert port.roce_devices == ("rocep1s0f1",)
    assert (port.mtu, port.speed_mbps) == (9000, 200000)
    lo = found.by_name("lo")
    assert lo.ipv4 == ("127.0.0.1/8",) and lo.roce_devices == () and lo.speed_mbps is None
    assert [i.name for i in found.interfaces] == ["enp1s0f1np1", "lo"]  # sorted, nothing else


def test_own_link_down_then_up(pair):
    a = pair.nodes[0]
    pair.set_link(a, False)
    port = read(a)[1]
    assert not port.up and port.state == "DOWN"
    pair.set_link(a, True)
    assert read(a)[1].up


def test_cable_pulled_at_the_far_end(pair):
    a, b = pair.nodes
    pair.set_link(b, False)
    port = read(a)[1]
    assert not port.up and port.state != "UP"  # admin up, no carrier
    assert port.ipv4 == ("192.168.100.10/24",)


def test_port_without_ipv4(pair):
    a = pair.nodes[0]
    pair.remove_address(a)
    port = read(a)[1]
    assert port.up and port.ipv4 == ()
    pair.add_address(a, "192.168.100.20/24")
    pair.add_address(a, "10.9.0.1/16")
    assert sorted(read(a)[1].ipv4) == ["10.9.0.1/16", "192.168.100.20/24"]


def test_twin_and_management_are_read_with_their_own_facts(pair):
    pair.add_twin()
    pair.add_management()
    found, _ = read(pair.nodes[0])
    twin, mgmt = found.by_name("enP2p1s0f1np1"), found.by_name("enP7s7")
    assert twin.roce_devices == ("roceP2p1s0f1",) and twin.ipv4 == ("192.168.101.10/24",)
    assert mgmt.roce_devices == () and mgmt.ipv4 == ("10.20.0.10/24",) and mgmt.speed_mbps == 10000
    assert mgmt.up


@pytest.mark.parametrize("head_ip, expected", [
    ("192.168.101.11", ("enP2p1s0f1np1", "192.168.101.10")),
    ("192.168.100.11", ("enp1s0f1np1", "192.168.100.10")),
    (None, ("enp1s0f1np1", "192.168.100.10")),
    ("10.20.0.11", ("enp1s0f1np1", "192.168.100.10")),  # the management subnet: never
])
def test_choice_between_twins_follows_the_head_subnet(pair, head_ip, expected):
    pair.add_twin()
    pair.add_management()
    found, _ = read(pair.nodes[0])
    choice = choose_interface(found.interfaces, head_ip=head_ip)
    assert (choice.name, choice.address) == expected


def test_default_route_interface_is_not_a_fallback(pair):
    pair.add_management()
    a = pair.nodes[0]
    pair.set_link(a, False)
    found, _ = read(a)
    with pytest.raises(InterfaceDown) as info:
        choose_interface(found.interfaces)
    assert "enp1s0f1np1 (rocep1s0f1, Down (down)" in str(info.value)
    assert "enP7s7" not in str(info.value)


def test_unreadable_speed_is_none(pair):
    a = pair.nodes[0]
    Path(a.sysfs_root, "class/net/enp1s0f1np1/speed").write_text("-1\n")  # what a link without speed shows
    assert read(a)[1].speed_mbps is None


def test_missing_namespace_is_an_error_and_is_not_created(netns_ok, tmp_path):
    name = "svtest-does-not-exist"
    with pytest.raises(DiscoveryError, match="svtest-does-not-exist"):
        discover(tmp_path, netns=name)
    assert netns.list_namespaces(name) == []


def test_missing_sysfs_root_is_an_error(tmp_path):
    with pytest.raises(DiscoveryError, match="is not a folder"):
        discover(tmp_path / "typo")


# --- the netifaces fallback --------------------------------------------------------
FALLBACK = """
import errno, json, sys
from orchestrator.net.discovery import discover
from orchestrator.net.selection import choose_interface
def deny(netns):
    raise PermissionError(errno.EPERM, "Operation not permitted (AF_NETLINK)")
found = discover(sys.argv[1], open_netlink=deny)
port = found.by_name("enp1s0f1np1")
print(json.dumps({"source": found.source, "notes": found.notes, "port": port.to_json(),
                  "chosen": choose_interface(found.interfaces).name}))
"""


def test_fallback_inside_a_spark_when_netlink_is_refused(pair):
    a = pair.nodes[0]
    r = a.run(sys.executable, "-c", FALLBACK, a.sysfs_root, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["source"] == "netifaces"
    assert "netlink unavailable" in out["notes"][0] and "netifaces" in out["notes"][0]
    port = out["port"]
    assert port["ipv4"] == ["192.168.100.10/24"] and port["up"] is True
    assert (port["mtu"], port["speed_mbps"], port["roce_devices"]) == (9000, 200000, ["rocep1s0f1"])
    assert out["chosen"] == "enp1s0f1np1"


def test_fallback_in_this_process(tmp_path):
    pytest.importorskip("netifaces")
    found = discover(tmp_path, open_netlink=deny_netlink)
    assert found.source == "netifaces" and len(found.notes) == 1
    assert "127.0.0.1/8" in found.by_name("lo").ipv4


def test_fallback_without_netifaces_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "netifaces", None)  # import fails as if not installed
    with pytest.raises(DiscoveryError) as info:
        discover(tmp_path, open_netlink=deny_netlink)
    assert "netifaces is not installed" in str(info.value) and "fallback" in info.value.hint


def test_fallback_failing_too_is_a_discovery_error(tmp_path, monkeypatch):
    netifaces = pytest.importorskip("netifaces")

    def refuse():
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(netifaces, "interfaces", refuse)  # what glibc's getifaddrs gives under the ban
    with pytest.raises(DiscoveryError, match="netifaces cannot list interfaces") as info:
        discover(tmp_path, open_netlink=deny_netlink)
    assert "AF_NETLINK" in info.value.hint


def test_no_fallback_for_a_named_namespace(tmp_path):
    with pytest.raises(DiscoveryError, match="cannot read network namespace 'ns1'"):
        discover(tmp_path, netns="ns1", open_netlink=deny_netlink)


# --- pure pieces --------------------------------------------------------------------
def test_roce_map_reads_like_ibdev2netdev(tmp_path):
    ib = tmp_path / "class" / "infiniband"
    for dev, net in [("rocep1s0f1", "enp1s0f1np1"), ("roceP2p1s0f1", "enP2p1s0f1np1"),
                     ("mlx5_bond", "bond0"), ("mlx5_bond2", "bond0")]:
        (ib / dev / "device" / "net" / net).mkdir(parents=True)
    (ib / "rdma_no_net" / "device").mkdir(parents=True)  # a device with no netdev
    assert roce_map(tmp_path) == {
        "enp1s0f1np1": ("rocep1s0f1",),
        "enP2p1s0f1np1": ("roceP2p1s0f1",),
        "bond0": ("mlx5_bond", "mlx5_bond2"),
    }
    assert roce_map(tmp_path / "missing") == {}


@pytest.mark.parametrize("state, flags, up", [
    ("UP", 0x1, True), ("UNKNOWN", 0x1, True), ("UNKNOWN", 0x0, False),
    ("DOWN", 0x1, False), ("LOWERLAYERDOWN", 0x1, False), ("DORMANT", 0x1, False),
])
def test_is_up(state, flags, up):
    assert is_up(state, flags) is up


def test_build_interfaces_joins_links_roce_and_speed():
    rows = [
        {"name": "zeth", "state": "DOWN", "flags": 0, "mtu": 1500, "ipv4": ()},
        {"name": "enp1s0f1np1", "state": "UP", "flags": 1, "mtu": 9000, "ipv4": ("192.168.100.10/24",)},
    ]
    out = build_interfaces(rows, {"enp1s0f1np1": ("rocep1s0f1",)}, {"enp1s0f1np1": 200000, "zeth": None})
    assert [i.name for i in out] == ["enp1s0f1np1", "zeth"]
    assert out[0].has_rdma and out[0].up and out[0].speed_mbps == 200000
    assert not out[1].has_rdma and not out[1].up and out[1].state == "DOWN"
