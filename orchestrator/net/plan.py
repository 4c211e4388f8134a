"""Discover, choose, plan: the network half of a node's plan, as one value."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Mapping

from .commenv import EnvPlan, plan_environment
from .discovery import Discovery
from ..errors import UsageError
from .selection import Choice, choose_interface


@dataclass(frozen=True)
class NetworkPlan:
    discovery: Discovery
    choice: Choice
    env: EnvPlan
    head_ip: str | None

    @property
    def node_ip(self) -> str:
        return self.choice.address


def check_ipv4(value: str | None, flag: str = "--head-ip") -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not an IPv4 address", "e.g. --head-ip 192.168.100.10") from None


def with_node_ip(choice: Choice, node_ip: str | None) -> Choice:
    """`--node-ip`: this node's address when the interface's own is not the one to use
    (several addresses on one port, or loopback addresses such as 127.0.0.2)."""
    node_ip = check_ipv4(node_ip, "--node-ip")
    if node_ip is None:
        return choice
    if not choice.interface.subnet_holds(node_ip):
        raise UsageError(f"--node-ip {node_ip} is not on {choice.name}'s subnet ({', '.join(choice.interface.ipv4)})",
                         "give an address of the chosen interface")
    return replace(choice, address=node_ip, reason=f"{choice.reason}; address from --node-ip")


def plan_network(discovery: Discovery, environ: Mapping[str, str], iface: str | None = None,
                 head_ip: str | None = None, force: bool = False,
                 extra: Mapping[str, str] | None = None, node_ip: str | None = None) -> NetworkPlan:
    """Pure: which interface, and which variables. Raises DiscoveryError or UsageError."""
    head_ip = check_ipv4(head_ip)
    choice = with_node_ip(choose_interface(discovery.interfaces, iface=iface, head_ip=head_ip,
                                           sysfs_root=discovery.sysfs_root), node_ip)
    env = plan_environment(choice, discovery.interfaces, environ, head_ip=head_ip, force=force, extra=extra)
    return NetworkPlan(discovery, choice, env, head_ip)
