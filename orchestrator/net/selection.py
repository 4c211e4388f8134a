"""Choosing the fabric interface: a pure function over discovered interfaces.

Order of preference (documented in the README):
1. `--iface NAME` (or SPARK_VLLM_IFACE) wins; it must exist, be up and have IPv4.
2. Otherwise only up, RoCE-backed interfaces with an IPv4 address qualify; never
   the default route, never an interface without RDMA.
3. Among several (a Spark shows each port twice, `enp1s0f1np1` and its twin
   `enP2p1s0f1np1`): the one whose subnet holds the head's address (`--head-ip`),
   then the faster link, then the primary PCI domain (`enp…`) before the twin
   (`enP2p…`), then the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .discovery import Interface
from ..errors import InterfaceDown, InterfaceNotFound, InterfaceWithoutAddress, NoRdmaInterface

UP_HINT = "check the cable, the netplan config, and `ip link set <iface> up`"


@dataclass(frozen=True)
class Choice:
    interface: Interface
    address: str  # IPv4 without prefix
    reason: str

    @property
    def name(self) -> str:
        return self.interface.name


def describe(interfaces: tuple[Interface, ...] | list[Interface]) -> str:
    """`enp1s0f1np1 (rocep1s0f1, Up, 192.168.100.10/24)` for each, for errors."""
    parts = []
    for i in interfaces:
        bits = list(i.roce_devices) + ["Up" if i.up else f"Down ({i.state.lower()})"]
        bits.append(", ".join(i.ipv4) if i.ipv4 else "no IPv4")
        parts.append(f"{i.name} ({', '.join(bits)})")
    return "; ".join(parts) or "none"


def pci_domain(name: str) -> int:
    """`enP2p1s0f1np1` -> 2; `enp1s0f1np1` -> 0 (the primary domain)."""
    m = re.match(r"en[Pp](\d+)p", name)
    return int(m.group(1)) if m and name.startswith("enP") else 0


def _address_in(iface: Interface, head_ip: str | None) -> str:
    return (head_ip and iface.address_for(head_ip)) or iface.addresses[0]


def _explicit(interfaces: tuple[Interface, ...], name: str, head_ip: str | None) -> Choice:
    iface = next((i for i in interfaces if i.name == name), None)
    if iface is None:
        raise InterfaceNotFound(
            f"interface {name!r} does not exist; candidates: {describe([i for i in interfaces if i.has_rdma] or interfaces)}",
            "pass --iface with one of these names",
        )
    if not iface.up:
        raise InterfaceDown(f"interface {name} is down ({iface.state.lower()})", UP_HINT)
    if not iface.ipv4:
        raise InterfaceWithoutAddress(
            f"interface {name} is up but has no IPv4 address",
            "give it one in netplan (the playbook uses 192.168.100.10/24 and .11/24)",
        )
    return Choice(iface, _address_in(iface, head_ip), "chosen with --iface")


def choose_interface(interfaces: tuple[Interface, ...], iface: str | None = None,
                     head_ip: str | None = None, sysfs_root: str = "/sys") -> Choice:
    """Pick the interface the cluster talks over. Raises a DiscoveryError subclass."""
    if iface:
        return _explicit(interfaces, iface, head_ip)
    rdma = [i for i in interfaces if i.has_rdma]
    if not rdma:
        raise NoRdmaInterface(
            f"no RoCE device found (nothing under {sysfs_root.rstrip('/')}/class/infiniband maps to an interface)",
            "name the interface to use with --iface",
        )
    up = [i for i in rdma if i.up]
    if not up:
        raise InterfaceDown(f"no RoCE interface is up: {describe(rdma)}", UP_HINT)
    ready = [i for i in up if i.ipv4]
    if not ready:
        raise InterfaceWithoutAddress(
            f"RoCE interfaces are up but none has an IPv4 address: {describe(up)}",
            "give one an address in netplan, or pass --iface",
        )
    ranked = sorted(
        ready,
        key=lambda i: (
            not (head_ip and i.subnet_holds(head_ip)),
            -(i.speed_mbps or 0),
            pci_domain(i.name),
            i.name,
        ),
    )
    best = ranked[0]
    if head_ip and best.subnet_holds(head_ip):
        reason = f"up RoCE interface on the head's subnet ({head_ip})"
    elif len(ranked) > 1:
        reason = f"first of {len(ranked)} up RoCE interfaces (speed, then primary PCI domain, then name)"
    else:
        reason = "the only up RoCE interface with IPv4"
    return Choice(best, _address_in(best, head_ip), reason)
