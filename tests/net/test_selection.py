"""choose_interface over plain Interface values: the documented order and its errors."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.errors import (DiscoveryError, InterfaceDown, InterfaceNotFound,
                                 InterfaceWithoutAddress, NoRdmaInterface, UsageError)
from orchestrator.net.plan import check_ipv4
from orchestrator.net.selection import choose_interface, describe, pci_domain


@pytest.fixture
def spark(make_iface):
    """One Spark as the kernel shows it: the port, its twin, management, loopback."""
    return (
        make_iface("enp1s0f1np1", "192.168.100.10/24", roce="rocep1s0f1"),
        make_iface("enP2p1s0f1np1", "192.168.101.10/24", roce="roceP2p1s0f1"),
        make_iface("enP7s7", "10.20.0.10/24", roce=(), speed=10000),
        make_iface("lo", "127.0.0.1/8", roce=(), speed=None, state="UNKNOWN"),
    )


def test_single_up_roce_port_is_chosen(make_iface):
    port = make_iface()
    choice = choose_interface((port, make_iface("enP7s7", "10.20.0.10/24", roce=())))
    assert (choice.name, choice.address) == ("enp1s0f1np1", "192.168.100.10")
    assert choice.reason == "the only up RoCE interface with IPv4"


@pytest.mark.parametrize("head_ip, name, address", [
    ("192.168.101.11", "enP2p1s0f1np1", "192.168.101.10"),
    ("192.168.100.11", "enp1s0f1np1", "192.168.100.10"),
    (None, "enp1s0f1np1", "192.168.100.10"),
    ("172.16.0.1", "enp1s0f1np1", "192.168.100.10"),
    ("10.20.0.11", "enp1s0f1np1", "192.168.100.10"),
])
def test_head_subnet_then_primary_pci_domain(spark, head_ip, name, address):
    choice = choose_interface(spark, head_ip=head_ip)
    assert (choice.name, choice.address) == (name, address)
    if head_ip and head_ip.startswith("192.168."):
        assert head_ip in choice.reason


def test_order_does_not_depend_on_input_order(spark):
    results = {choose_interface(p).name for p in itertools.permutations(spark)}
    assert results == {"enp1s0f1np1"}


def test_faster_link_before_pci_domain(make_iface):
    slow = make_iface("enp1s0f1np1", "192.168.100.10/24", speed=100000)
    fast = make_iface("enP2p1s0f1np1", "192.168.101.10/24", roce="roceP2p1s0f1", speed=200000)
    assert choose_interface((slow, fast)).name == "enP2p1s0f1np1"


def test_address_on_the_head_subnet_when_the_port_has_several(make_iface):
    port = make_iface(ipv4=("10.0.0.5/8", "192.168.100.10/24"))
    assert choose_interface((port,), head_ip="192.168.100.11").address == "192.168.100.10"
    assert choose_interface((port,)).address == "10.0.0.5"


def test_management_with_default_route_is_never_chosen_alone(make_iface):
    mgmt = make_iface("enP7s7", "10.20.0.10/24", roce=(), speed=10000)
    with pytest.raises(NoRdmaInterface) as info:
        choose_interface((mgmt, make_iface("lo", "127.0.0.1/8", roce=())), head_ip="10.20.0.11")
    assert "--iface" in info.value.hint


def test_no_roce_port_up_names_each_with_its_state(make_iface):
    ifaces = (
        make_iface("enp1s0f1np1", up=False, state="DOWN"),
        make_iface("enP2p1s0f1np1", "192.168.101.10/24", roce="roceP2p1s0f1", up=False, state="LOWERLAYERDOWN"),
        make_iface("enP7s7", "10.20.0.10/24", roce=()),
    )
    with pytest.raises(InterfaceDown) as info:
        choose_interface(ifaces)
    msg = str(info.value)
    assert "enp1s0f1np1 (rocep1s0f1, Down (down), 192.168.100.10/24)" in msg
    assert "enP2p1s0f1np1 (roceP2p1s0f1, Down (lowerlayerdown)" in msg
    assert "enP7s7" not in msg
    assert "cable" in info.value.hint


def test_roce_ports_up_without_ipv4(make_iface):
    with pytest.raises(InterfaceWithoutAddress, match="none has an IPv4 address"):
        choose_interface((make_iface(ipv4=()), make_iface("enP7s7", "10.20.0.10/24", roce=())))


def test_down_port_is_skipped_for_the_up_twin(make_iface):
    ifaces = (make_iface(up=False),
              make_iface("enP2p1s0f1np1", "192.168.101.10/24", roce="roceP2p1s0f1"))
    assert choose_interface(ifaces, head_ip="192.168.100.11").name == "enP2p1s0f1np1"


# --- --iface ------------------------------------------------------------------------
def test_explicit_iface_wins_even_without_rdma(spark):
    choice = choose_interface(spark, iface="enP7s7")
    assert (choice.name, choice.address, choice.reason) == ("enP7s7", "10.20.0.10", "chosen with --iface")


def test_explicit_twin_over_the_head_subnet(spark):
    assert choose_interface(spark, iface="enP2p1s0f1np1", head_ip="192.168.100.11").name == "enP2p1s0f1np1"


@pytest.mark.parametrize("name, error, words", [
    ("eth9", InterfaceNotFound, ["'eth9' does not exist", "candidates: enp1s0f1np1 (rocep1s0f1, Down (down)",
                                 "enP2p1s0f1np1 (roceP2p1s0f1, Up, no IPv4)"]),
    ("enp1s0f1np1", InterfaceDown, ["enp1s0f1np1 is down (down)"]),
    ("enP2p1s0f1np1", InterfaceWithoutAddress, ["enP2p1s0f1np1 is up but has no IPv4"]),
])
def test_explicit_iface_must_exist_be_up_and_have_ipv4(make_iface, name, error, words):
    ifaces = (make_iface(up=False),
              make_iface("enP2p1s0f1np1", ipv4=(), roce="roceP2p1s0f1"),
              make_iface("enP7s7", "10.20.0.10/24", roce=()))
    with pytest.raises(error) as info:
        choose_interface(ifaces, iface=name)
    assert isinstance(info.value, DiscoveryError) and info.value.hint
    for w in words:
        assert w in str(info.value)


# --- helpers ------------------------------------------------------------------------
@pytest.mark.parametrize("name, domain", [
    ("enp1s0f1np1", 0), ("enP2p1s0f1np1", 2), ("enP3p1s0f0np0", 3), ("eth0", 0), ("lo", 0),
])
def test_pci_domain(name, domain):
    assert pci_domain(name) == domain


def test_describe_lists_state_and_addresses(make_iface):
    text = describe([make_iface(), make_iface("enP7s7", ipv4=(), roce=(), up=False, state="DOWN")])
    assert text == "enp1s0f1np1 (rocep1s0f1, Up, 192.168.100.10/24); enP7s7 (Down (down), no IPv4)"
    assert describe([]) == "none"


@pytest.mark.parametrize("bad", ["300.1.1.1", "head", "192.168.100", "::1"])
def test_head_ip_must_be_ipv4(bad):
    with pytest.raises(UsageError, match="--head-ip"):
        check_ipv4(bad)


def test_head_ip_is_normalised():
    assert check_ipv4(" 192.168.100.10 ") == "192.168.100.10"
    assert check_ipv4(None) is None
