"""Discover, choose, plan: the network half of a node's plan, as one value."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

from .commenv import EnvPlan, plan_environment
from .discovery import Discovery
from .errors import UsageError
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


def plan_network(discovery: Discovery, environ: Mapping[str, str], iface: str | None = None,
                 head_ip: str | None = None, force: bool = False,
                 extra: Mapping[str, str] | None = None) -> NetworkPlan:
    """Pure: which interface, and which variables. Raises DiscoveryError or UsageError."""
    head_ip = check_ipv4(head_ip)
    choice = choose_interface(discovery.interfaces, iface=iface, head_ip=head_ip,
                              sysfs_root=discovery.sysfs_root)
    env = plan_environment(choice, discovery.interfaces, environ, head_ip=head_ip, force=force, extra=extra)
    return NetworkPlan(discovery, choice, env, head_ip)
