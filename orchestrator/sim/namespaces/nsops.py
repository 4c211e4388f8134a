"""The few namespace and link operations the simulated Sparks need, two ways.

`IpOps` drives iproute2's `ip` (what a developer machine has); `Pyroute2Ops` does the
same through netlink with pyroute2 (machines without `ip`, such as the GPU test
machine) and starts processes with `nsenter` + `unshare --mount`, remounting /sys as
`ip netns exec` does: without that, a process inside reads the host's interfaces in
/sys/class/net. Both name namespaces in /var/run/netns, so either one sees and
removes what the other made. `ops_for(None)` picks `ip` where it is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Protocol

from ...errors import SimulationError

NETNS_DIR = "/var/run/netns"
HINT = "simulated Sparks need root and iproute2 (`ip netns`, veth), or pyroute2 with nsenter and unshare"
IFF_LOWER_UP = 0x10000
# Inside the new mount namespace: a sysfs of the network namespace over /sys, then the command.
REMOUNT_SYS = 'mount -t sysfs sysfs /sys && exec "$@"'

Link = tuple[str, set[str], str]  # name, flags (LOWER_UP among them), operstate


class NsOps(Protocol):
    name: str

    def add_netns(self, ns: str) -> None: ...
    def del_netns(self, ns: str) -> None: ...
    def exec_prefix(self, ns: str) -> tuple[str, ...]: ...
    def add_veth(self, ns: str, name: str, index: int, peer: str, peer_index: int, peer_ns: str | None) -> None: ...
    def add_bridge(self, ns: str, name: str) -> None: ...
    def set_link(self, ns: str, name: str, up: bool | None = None, mtu: int | None = None,
                 master: str | None = None) -> None: ...
    def address(self, ns: str, name: str, cidr: str, add: bool = True) -> None: ...
    def default_route(self, ns: str, gateway: str, name: str) -> None: ...
    def links(self, ns: str) -> list[Link]: ...


def list_namespaces(prefix: str = "") -> list[str]:
    """Named network namespaces (both `ip netns add` and pyroute2 put them here)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def namespace_pids(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (what `ip netns pids` prints). Zombies
    are not listed (their /proc/PID/ns/net is gone)."""
    try:
        want = os.stat(os.path.join(NETNS_DIR, ns))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_ino, st.st_dev) == (want.st_ino, want.st_dev):
                found.append(int(entry))
    return found


class IpOps:
    """iproute2's `ip`."""

    name = "ip"

    @staticmethod
    def run(*args: str) -> str:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode:
            raise SimulationError(f"ip {' '.join(args)} failed: {r.stderr.strip()}", HINT)
        return r.stdout

    def add_netns(self, ns: str) -> None:
        self.run("netns", "add", ns)
        self.run("-n", ns, "link", "set", "lo", "up")

    def del_netns(self, ns: str) -> None:
        self.run("netns", "del", ns)

    def exec_prefix(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    def add_veth(self, ns, name, index, peer, peer_index, peer_ns) -> None:
        where = ("netns", peer_ns) if peer_ns else ()
        self.run("-n", ns, "link", "add", name, "index", str(index), "type", "veth",
                 "peer", "name", peer, "index", str(peer_index), *where)

    def add_bridge(self, ns, name) -> None:
        self.run("-n", ns, "link", "add", name, "type", "bridge")

    def set_link(self, ns, name, up=None, mtu=None, master=None) -> None:
        args = [*(("mtu", str(mtu)) if mtu else ()), *(("master", master) if master else ()),
                *((("up",) if up else ("down",)) if up is not None else ())]
        self.run("-n", ns, "link", "set", name, *args)

    def address(self, ns, name, cidr, add=True) -> None:
        self.run("-n", ns, "addr", "add" if add else "del", cidr, "dev", name)

    def default_route(self, ns, gateway, name) -> None:
        self.run("-n", ns, "route", "add", "default", "via", gateway, "dev", name)

    def links(self, ns) -> list[Link]:
        rows = []
        for line in self.run("-n", ns, "-o", "link", "show").splitlines():
            m = re.match(r"\d+: ([^:@]+)(?:@\S+)?: <([^>]*)>.* state (\S+)", line)
            if m:
                rows.append((m.group(1), set(m.group(2).split(",")), m.group(3)))
        return rows


class Pyroute2Ops:
    """Netlink through pyroute2; processes through nsenter and unshare."""

    name = "pyroute2"

    @staticmethod
    def _ns(ns: str):
        from pyroute2 import NetNS

        return NetNS(ns)

    @staticmethod
    def _index(ipr, name: str) -> int:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise SimulationError(f"no link {name!r} in the namespace", HINT)
        return found[0]

    def _do(self, what: str, fn):
        try:
            return fn()
        except SimulationError:
            raise
        except Exception as exc:  # pyroute2's NetlinkError and OSError: one clear line
            raise SimulationError(f"{what} failed: {exc}", HINT) from exc

    def add_netns(self, ns: str) -> None:
        from pyroute2 import netns

        def make():
            netns.create(ns)
            with self._ns(ns) as ipr:
                ipr.link("set", index=self._index(ipr, "lo"), state="up")
        self._do(f"namespace {ns}", make)

    def del_netns(self, ns: str) -> None:
        from pyroute2 import netns

        self._do(f"removing namespace {ns}", lambda: netns.remove(ns))

    def exec_prefix(self, ns: str) -> tuple[str, ...]:
        return ("nsenter", f"--net={NETNS_DIR}/{ns}", "unshare", "--mount", "--", "sh", "-c", REMOUNT_SYS, "sh")

    def add_veth(self, ns, name, index, peer, peer_index, peer_ns) -> None:
        # The peer is made here under a temporary name, then moved and renamed: the
        # same name cannot exist twice in one namespace.
        tmp = f"sv{peer_index}"

        def make():
            with self._ns(ns) as ipr:
                ipr.link("add", ifname=name, index=index, kind="veth", peer={"ifname": tmp})
                if peer_ns:
                    ipr.link("set", index=self._index(ipr, tmp), net_ns_fd=peer_ns)
            with self._ns(peer_ns or ns) as ipr:
                ipr.link("set", index=self._index(ipr, tmp), ifname=peer)
        self._do(f"veth {name}/{peer}", make)

    def add_bridge(self, ns, name) -> None:
        def make():
            with self._ns(ns) as ipr:
                ipr.link("add", ifname=name, kind="bridge")
        self._do(f"bridge {name}", make)

    def set_link(self, ns, name, up=None, mtu=None, master=None) -> None:
        def change():
            with self._ns(ns) as ipr:
                index = self._index(ipr, name)
                if mtu:
                    ipr.link("set", index=index, mtu=mtu)
                if master:
                    ipr.link("set", index=index, master=self._index(ipr, master))
                if up is not None:
                    ipr.link("set", index=index, state="up" if up else "down")
        self._do(f"link {name} in {ns}", change)

    def address(self, ns, name, cidr, add=True) -> None:
        ip, prefixlen = cidr.split("/")

        def change():
            with self._ns(ns) as ipr:
                ipr.addr("add" if add else "del", index=self._index(ipr, name), address=ip, prefixlen=int(prefixlen))
        self._do(f"address {cidr} on {name}", change)

    def default_route(self, ns, gateway, name) -> None:
        def change():
            with self._ns(ns) as ipr:
                ipr.route("add", dst="default", gateway=gateway, oif=self._index(ipr, name))
        self._do(f"default route via {gateway}", change)

    def links(self, ns) -> list[Link]:
        def read():
            with self._ns(ns) as ipr:
                return [(link.get_attr("IFLA_IFNAME"), {"LOWER_UP"} if link["flags"] & IFF_LOWER_UP else set(),
                         link.get_attr("IFLA_OPERSTATE")) for link in ipr.get_links()]
        return self._do(f"links of {ns}", read)


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot build namespaces here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if backend == "ip":
        return None if shutil.which("ip") else "iproute2's `ip` command is not installed"
    missing = [tool for tool in ("nsenter", "unshare") if not shutil.which(tool)]
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        missing.append("pyroute2")
    return f"missing for namespaces: {', '.join(missing)}" if missing else None


def ops_for(backend: str | None) -> NsOps:
    """`ip` where it is installed (or asked for), else pyroute2."""
    if backend is None:
        backend = "ip" if shutil.which("ip") else "pyroute2"
    if backend == "ip":
        return IpOps()
    if backend == "pyroute2":
        return Pyroute2Ops()
    raise SimulationError(f"unknown namespace backend {backend!r}", "use 'ip' or 'pyroute2'")
