"""Discovery: which network interfaces this machine has, and which carry RDMA.

Replaces `ibdev2netdev` and `ip -4 addr show | grep`: links and IPv4 addresses come
from one netlink dump (pyroute2), RoCE devices are mapped to interfaces through
sysfs exactly as `ibdev2netdev` does
(`<sysfs>/class/infiniband/<dev>/device/net/<iface>`). Where netlink cannot be
opened, netifaces (and sysfs for state and MTU) stands in, and the result says so.

This module only reads; choosing among the interfaces is `selection.py`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DiscoveryError
from .roce import Gid, gid_table

IFF_UP = 0x1


@dataclass(frozen=True)
class Interface:
    name: str
    up: bool
    ipv4: tuple[str, ...] = ()  # "a.b.c.d/nn"
    mtu: int | None = None
    speed_mbps: int | None = None
    roce_devices: tuple[str, ...] = ()
    state: str = "UNKNOWN"  # the kernel's operstate, as ibdev2netdev shows it
    gids: tuple[Gid, ...] = ()  # used GID-table entries of its RoCE devices (read for up ports)

    @property
    def has_rdma(self) -> bool:
        return bool(self.roce_devices)

    @property
    def addresses(self) -> tuple[str, ...]:
        """IPv4 addresses without their prefix."""
        return tuple(a.split("/")[0] for a in self.ipv4)

    def address_for(self, ip: str) -> str | None:
        """This interface's address on the subnet that holds `ip`, if any."""
        try:
            target = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        for a in self.ipv4:
            net = ipaddress.IPv4Interface(a)
            if target in net.network:
                return str(net.ip)
        return None

    def subnet_holds(self, ip: str) -> bool:
        return self.address_for(ip) is not None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "roce_devices": list(self.roce_devices),
            "up": self.up,
            "state": self.state,
            "ipv4": list(self.ipv4),
            "mtu": self.mtu,
            "speed_mbps": self.speed_mbps,
        }


@dataclass(frozen=True)
class Discovery:
    interfaces: tuple[Interface, ...]
    source: str  # "netlink" or "netifaces"
    notes: tuple[str, ...] = field(default=())
    sysfs_root: str = "/sys"

    def by_name(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)


# --- sysfs ---------------------------------------------------------------------
def roce_map(sysfs_root: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Interface name -> RoCE devices backing it, like `ibdev2netdev`."""
    base = Path(sysfs_root, "class", "infiniband")
    found: dict[str, list[str]] = {}
    try:
        devices = sorted(p.name for p in base.iterdir())
    except OSError:
        return {}
    for dev in devices:
        try:
            netdevs = sorted(p.name for p in (base / dev / "device" / "net").iterdir())
        except OSError:
            continue
        for iface in netdevs:
            found.setdefault(iface, []).append(dev)
    return {k: tuple(v) for k, v in found.items()}


def _read_sysfs(sysfs_root: str | os.PathLike, iface: str, attr: str) -> str | None:
    try:
        return Path(sysfs_root, "class", "net", iface, attr).read_text().strip()
    except OSError:  # EINVAL for `speed` on links without one, ENOENT in fake trees
        return None


def _int_or_none(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


# --- netlink -------------------------------------------------------------------
def _open_iproute(netns: str | None):
    from pyroute2 import IPRoute, NetNS

    # flags=0: pyroute2's NetNS defaults to O_CREAT and would silently create a
    # missing namespace; without it a wrong name fails (FileNotFoundError).
    return NetNS(netns, flags=0) if netns else IPRoute()


def _netlink_links(netns: str | None, opener: Callable) -> list[dict]:
    """One dump of links and IPv4 addresses: [{name, state, flags, mtu, ipv4}]."""
    with opener(netns) as ipr:
        links = list(ipr.get_links())
        addrs = list(ipr.get_addr(family=socket.AF_INET))
    by_index: dict[int, list[str]] = {}
    for a in addrs:
        by_index.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    return [
        {
            "name": link.get_attr("IFLA_IFNAME"),
            "state": link.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
            "flags": link["flags"],
            "mtu": link.get_attr("IFLA_MTU"),
            "ipv4": tuple(by_index.get(link["index"], ())),
        }
        for link in links
    ]


def _netifaces_links(sysfs_root: str | os.PathLike) -> list[dict]:
    import netifaces

    rows = []
    for name in netifaces.interfaces():
        v4 = netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
        ipv4 = tuple(
            str(ipaddress.IPv4Interface(f"{a['addr']}/{a.get('netmask', '255.255.255.255')}"))
            for a in v4
            if "addr" in a
        )
        state = (_read_sysfs(sysfs_root, name, "operstate") or "unknown").upper()
        flags = int(_read_sysfs(sysfs_root, name, "flags") or "0", 16)
        rows.append({"name": name, "state": state, "flags": flags,
                     "mtu": _int_or_none(_read_sysfs(sysfs_root, name, "mtu")), "ipv4": ipv4})
    return rows


def is_up(state: str, flags: int) -> bool:
    """Up as `ibdev2netdev` means it: operstate UP (UNKNOWN counts when IFF_UP is set,
    as for loopback and some virtual links)."""
    return state == "UP" or (state == "UNKNOWN" and bool(flags & IFF_UP))


def build_interfaces(rows: Iterable[dict], roce: dict[str, tuple[str, ...]],
                     speeds: dict[str, int | None],
                     gids: dict[str, tuple[Gid, ...]] | None = None) -> tuple[Interface, ...]:
    """Pure: raw link rows + RoCE map + speeds (+ GID tables) -> sorted Interface values."""
    return tuple(
        sorted(
            (
                Interface(
                    name=r["name"],
                    up=is_up(r["state"], r["flags"]),
                    state=r["state"],
                    ipv4=tuple(r["ipv4"]),
                    mtu=r["mtu"],
                    speed_mbps=speeds.get(r["name"]),
                    roce_devices=roce.get(r["name"], ()),
                    gids=(gids or {}).get(r["name"], ()),
                )
                for r in rows
            ),
            key=lambda i: i.name,
        )
    )


def discover(sysfs_root: str | os.PathLike = "/sys", netns: str | None = None,
             open_netlink: Callable = _open_iproute) -> Discovery:
    """Read this machine's (or network namespace's) interfaces.

    `open_netlink(netns)` returns a pyroute2 IPRoute-like context manager; a seam so
    tests can stand in for a sandbox that forbids netlink.
    """
    notes: list[str] = []
    if not Path(sysfs_root).is_dir():
        raise DiscoveryError(f"sysfs root {sysfs_root} is not a folder",
                             "pass --sysfs-root with a sysfs tree (default /sys)")
    try:
        rows = _netlink_links(netns, open_netlink)
        source = "netlink"
    except (OSError, ImportError) as exc:
        if netns:
            raise DiscoveryError(f"cannot read network namespace {netns!r}: {exc}",
                                 "check that it exists: ip netns list") from exc
        try:
            rows = _netifaces_links(sysfs_root)
        except ImportError:
            raise DiscoveryError(f"netlink cannot be opened ({exc}) and netifaces is not installed",
                                 "pip install 'spark-vllm[fallback]'") from exc
        except OSError as exc2:  # glibc's getifaddrs() asks netlink too: a seccomp ban stops both
            raise DiscoveryError(f"netlink cannot be opened ({exc}) and netifaces cannot list interfaces ({exc2})",
                                 "allow AF_NETLINK sockets (the sandbox or container seccomp profile forbids them)") from exc2
        source = "netifaces"
        notes.append(f"netlink unavailable ({exc}); addresses read with netifaces, state and MTU from sysfs")
    roce = roce_map(sysfs_root)
    speeds = {r["name"]: _int_or_none(_read_sysfs(sysfs_root, r["name"], "speed")) for r in rows}
    # GID tables only where NCCL may use them: the RoCE devices of up ports.
    gids = {r["name"]: tuple(g for dev in roce.get(r["name"], ()) for g in gid_table(sysfs_root, dev))
            for r in rows if r["name"] in roce and is_up(r["state"], r["flags"])}
    return Discovery(build_interfaces(rows, roce, speeds, gids), source, tuple(notes), str(sysfs_root))
