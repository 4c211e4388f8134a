"""RoCE GIDs: which entry of each RoCE device's GID table NCCL should use.

A RoCE device's GID table (`<sysfs>/class/infiniband/DEV/ports/1/gids/N`, with
`gid_attrs/types/N` and `gid_attrs/ndevs/N`) holds one entry per address and RoCE
version of the interfaces on top of it. NCCL needs the RoCE v2 entry that carries the
interface's IPv4 (an IPv4-mapped GID, ::ffff:a.b.c.d). Its index is not fixed: it
moves when addresses come and go (3 before a reboot, 4 after, was seen to hang the
TP handshake), so it is read each time, never assumed.

`NCCL_IB_GID_INDEX` is one number for every device: it is set only where all the
chosen devices agree; otherwise NCCL picks per device, told to take RoCE v2 over IPv4
(`NCCL_IB_ROCE_VERSION_NUM=2`, `NCCL_IB_ADDR_FAMILY=AF_INET`), and the plan says why.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

ROCE_V2 = "RoCE v2"
PORT = 1  # a Spark's ConnectX-7 RoCE devices have one port each
LEAVE_TO_NCCL = (("NCCL_IB_ROCE_VERSION_NUM", "2"), ("NCCL_IB_ADDR_FAMILY", "AF_INET"))


@dataclass(frozen=True)
class Gid:
    """One used entry of a device's GID table."""

    device: str
    index: int
    gid: str  # as sysfs writes it: eight groups of four hex digits
    type: str | None  # "RoCE v2", "IB/RoCE v1"; None when unreadable
    ndev: str | None  # the interface the entry belongs to

    @property
    def ipv4(self) -> str | None:
        """a.b.c.d when the GID is IPv4-mapped (::ffff:a.b.c.d)."""
        try:
            mapped = ipaddress.IPv6Address(self.gid).ipv4_mapped
        except ValueError:
            return None
        return str(mapped) if mapped else None


@dataclass(frozen=True)
class DeviceGid:
    """The entry chosen for one device, or why there is none."""

    device: str
    iface: str
    index: int | None
    gid: str | None  # "::ffff:192.168.100.10"
    reason: str

    def to_json(self) -> dict:
        return {"device": self.device, "iface": self.iface, "gid_index": self.index, "gid": self.gid,
                "reason": self.reason}


@dataclass(frozen=True)
class GidPlan:
    devices: tuple[DeviceGid, ...]
    index: int | None  # NCCL_IB_GID_INDEX, when every device agrees
    note: str | None  # why the choice is left to NCCL

    def rows(self) -> list[tuple[str, str, str]]:
        """(name, value, why) for the communication plan; nothing without a device."""
        if not self.devices:
            return []
        if self.index is not None:
            where = ", ".join(f"{d.device} ({d.gid})" for d in self.devices)
            return [("NCCL_IB_GID_INDEX", str(self.index), f"the RoCE v2 IPv4 GID of {where}")]
        return [(k, v, "no GID index common to the RoCE devices: NCCL picks RoCE v2 over IPv4 on each")
                for k, v in LEAVE_TO_NCCL]


# --- pure ----------------------------------------------------------------------
def pick(device: str, iface: str, addresses: tuple[str, ...], table: tuple[Gid, ...]) -> DeviceGid:
    """The RoCE v2 entry of `device` on `iface` whose IPv4 is one of the interface's
    (the first address first; the lowest index among equals)."""
    ours = [g for g in table if g.device == device and g.ndev == iface]
    v2 = [g for g in ours if g.type == ROCE_V2]
    for address in addresses:
        hits = sorted((g for g in v2 if g.ipv4 == address), key=lambda g: g.index)
        if hits:
            return DeviceGid(device, iface, hits[0].index, f"::ffff:{address}", f"RoCE v2, {address} on {iface}")
    if not addresses:
        why = f"{iface} has no IPv4 address"
    elif not ours:
        why = f"no GID of {device} belongs to {iface}"
    elif not v2:
        why = f"{device} has no RoCE v2 GID on {iface}"
    else:
        why = f"no RoCE v2 GID of {device} holds {iface}'s IPv4 ({', '.join(addresses)})"
    return DeviceGid(device, iface, None, None, why)


def plan_gids(chosen: tuple[DeviceGid, ...]) -> GidPlan:
    """One index where every device has one and all agree; else leave it to NCCL."""
    if not chosen:
        return GidPlan((), None, None)
    indexes = {d.index for d in chosen}
    if None not in indexes and len(indexes) == 1:
        return GidPlan(chosen, indexes.pop(), None)
    missing = [f"{d.device}: {d.reason}" for d in chosen if d.index is None]
    found = [f"{d.device} at {d.index}" for d in chosen if d.index is not None]
    if missing:
        why = "; ".join(missing)
    else:
        why = "the devices' RoCE v2 IPv4 GIDs sit at different indexes (" + ", ".join(found) + ")"
    return GidPlan(chosen, None, "NCCL_IB_GID_INDEX not set, NCCL chooses each device's GID "
                                 f"(NCCL_IB_ROCE_VERSION_NUM=2, NCCL_IB_ADDR_FAMILY=AF_INET): {why}")


# --- sysfs ---------------------------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # EINVAL for the attributes of an unused entry
        return None


def gid_table(sysfs_root: str | os.PathLike, device: str, port: int = PORT) -> tuple[Gid, ...]:
    """The used entries of one device's port (all-zero GIDs are unused slots)."""
    base = Path(sysfs_root, "class", "infiniband", device, "ports", str(port))
    try:
        names = sorted((p.name for p in (base / "gids").iterdir() if p.name.isdigit()), key=int)
    except OSError:
        return ()
    out = []
    for n in names:
        gid = _read(base / "gids" / n)
        if not gid or not gid.replace("0", "").replace(":", ""):
            continue
        out.append(Gid(device, int(n), gid, _read(base / "gid_attrs" / "types" / n),
                       _read(base / "gid_attrs" / "ndevs" / n)))
    return tuple(out)
