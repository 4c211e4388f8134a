"""Simulated DGX Spark machines: network namespaces cabled like the Sparks' fabric.

For the demo, the tests and the benchmarks, `SimNetwork` builds N "Sparks" on one
Linux host. Each is a network namespace with `lo` up and the fabric port named as on
a Spark (`enp1s0f1np1`, 192.168.100.(10+i)/24), plus a fake sysfs tree holding what
a veth cannot show: the RoCE device behind the port
(`class/infiniband/rocep1s0f1/device/net/enp1s0f1np1`) and its 200 Gb/s speed.
spark-vllm reads that tree through `--sysfs-root` / `SPARK_VLLM_SYSFS_ROOT`.
Two nodes get a direct veth pair (the one cable between two Sparks); more get a
bridge in a hub namespace (a switch). Everything is removed on exit, whatever
happens: processes left in the namespaces are killed first, since a namespace with a
live process outlives `ip netns del`.

Needs root and iproute2, or pyroute2 with nsenter and unshare (`nsops`). Names carry
the creating process's pid, so parallel runs never clash and `cleanup_stale` can
remove what a killed run left behind without touching a live one's.

    with SimNetwork(nodes=2) as net:
        head, worker = net.nodes
        head.run("spark-vllm", "net", env={**os.environ, "SPARK_VLLM_SYSFS_ROOT": head.sysfs_root})
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from ...errors import SimulationError
from . import nsops
from .nsops import HINT, list_namespaces, namespace_pids as pids

log = logging.getLogger("spark_vllm")


@dataclass(frozen=True)
class Port:
    """One kind of port every simulated node gets, with the subnet it sits on."""

    iface: str
    roce_device: str | None  # None: an Ethernet port without RDMA (management)
    subnet: str  # first three octets; node i gets .(10+i)
    speed_mbps: int
    prefixlen: int = 24


FABRIC = Port("enp1s0f1np1", "rocep1s0f1", "192.168.100", 200000)
TWIN = Port("enP2p1s0f1np1", "roceP2p1s0f1", "192.168.101", 200000)
MANAGEMENT = Port("enP7s7", None, "10.20.0", 10000)
MANAGEMENT_GATEWAY = "10.20.0.1"

# Attributes the netifaces fallback reads from the sysfs root. They are symlinks into
# /sys, which `ip netns exec` remounts for the namespace, so a reader inside the node
# sees the live state of its own link; only `speed` (a veth says 10000) is faked.
LIVE_ATTRS = ("operstate", "flags", "mtu", "carrier", "address")


@dataclass(frozen=True)
class SimNode:
    """One port of one simulated Spark: where it lives and how to reach into it."""

    index: int
    netns: str
    iface: str
    ip: str
    prefixlen: int
    sysfs_root: str
    roce_device: str | None = None
    # How a command enters the namespace with its own /sys (`ip netns exec`, or nsenter+unshare).
    exec_prefix: tuple[str, ...] = ()

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` run inside this node's namespace (exec'd: the pid is the command's own)."""
        return [*(self.exec_prefix or ("ip", "netns", "exec", self.netns)), *cmd]

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*cmd), **kwargs)

    def popen(self, *cmd: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*cmd), **kwargs)

    def cli_flags(self) -> tuple[str, ...]:
        """What `spark-vllm` needs on this node to see it as a Spark."""
        return ("--sysfs-root", self.sysfs_root)


@dataclass(frozen=True)
class LoopbackNode(SimNode):
    """A simulated Spark without root: a loopback address (127.0.0.2, .3, ...) in this
    machine's own namespace, on `lo`. Processes started through it are tracked so that
    `LoopbackNetwork` can end them."""

    procs: list = field(default_factory=list, compare=False, repr=False)

    def argv(self, *cmd: str) -> list[str]:
        return list(cmd)

    def popen(self, *cmd: str, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(*cmd), **kwargs)
        self.procs.append(proc)
        return proc

    def cli_flags(self) -> tuple[str, ...]:
        return ("--iface", "lo", "--node-ip", self.ip, "--sysfs-root", self.sysfs_root)


class LoopbackNetwork:
    """N simulated Sparks as 127.0.0.(2+i) on this machine's `lo`, for machines where
    namespaces cannot be built (no root). Same use as SimNetwork; on exit every process
    started through a node is ended, with everything under it."""

    def __init__(self, nodes: int = 2, kill_grace_s: float = 5.0) -> None:
        self.size, self.kill_grace_s = nodes, kill_grace_s
        self.nodes: tuple[LoopbackNode, ...] = ()
        self._tmp: str | None = None

    def __enter__(self) -> "LoopbackNetwork":
        self._tmp = tempfile.mkdtemp(prefix="spark-vllm-loopback-")  # an empty sysfs: no RoCE
        self.nodes = tuple(LoopbackNode(i, "", "lo", f"127.0.0.{2 + i}", 8, self._tmp) for i in range(self.size))
        return self

    def __exit__(self, *exc) -> None:
        procs = [p for node in self.nodes for p in node.procs]
        tree = []
        for p in procs:
            try:
                proc = psutil.Process(p.pid)
                tree += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=self.kill_grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class SimNetwork:
    """N simulated Sparks; a context manager that always tears them down."""

    def __init__(self, nodes: int = 2, prefix: str = "svsim", mtu: int = 1500,
                 kill_grace_s: float = 2.0, backend: str | None = None) -> None:
        if nodes < 1:
            raise SimulationError(f"nodes={nodes}: a simulated cluster needs at least one node")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
            raise SimulationError(f"prefix {prefix!r} must be letters, digits and _", "e.g. prefix='svtest'")
        self.size, self.prefix, self.mtu, self.kill_grace_s = nodes, prefix, mtu, kill_grace_s
        self.ops = nsops.ops_for(backend)  # `ip`, else pyroute2 (machines without iproute2)
        self.tag = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.namespaces = tuple(f"{self.tag}-n{i}" for i in range(nodes))
        self.hub = f"{self.tag}-hub" if nodes > 2 else None
        self.nodes: tuple[SimNode, ...] = ()
        self._tmp: str | None = None
        self._created: list[str] = []  # namespaces that exist, in creation order
        self._ports = 0  # ports connected so far; names the hub's bridges

    # --- building ---------------------------------------------------------------
    def __enter__(self) -> "SimNetwork":
        try:
            self._build()
        except BaseException:  # KeyboardInterrupt too: undo the half-built network
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_errors=exc_type is None)

    def _build(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix=f"{self.tag}-")
        for ns in self.namespaces + ((self.hub,) if self.hub else ()):
            self._created.append(ns)  # first: Ctrl-C right after `add` must not leak it
            self.ops.add_netns(ns)
        for i in range(self.size):
            Path(self.sysfs_root(i), "class", "infiniband").mkdir(parents=True)
            Path(self.sysfs_root(i), "class", "net").mkdir(parents=True)
        self.nodes = self._connect(FABRIC)

    def sysfs_root(self, index: int) -> str:
        assert self._tmp, "SimNetwork is not entered"
        return os.path.join(self._tmp, f"n{index}", "sys")

    def _connect(self, port: Port, address: bool = True) -> tuple[SimNode, ...]:
        """Give every node `port`, cabled to the same port of every other node.

        Each veth end gets its own ifindex: the kernel applies a veth's carrier change
        at once only when its peer's ifindex differs from its own, else up to a second
        later (linkwatch). Fresh namespaces would number both ends alike.
        """
        k, self._ports = self._ports, self._ports + 1

        def index(i: int, hub: bool = False) -> int:  # node i's end of port k
            return (10000 if hub else 0) + 100 * (i + 1) + k

        ops = self.ops
        if self.size == 2:  # one cable: both ends created straight in their namespaces
            ops.add_veth(self.namespaces[0], port.iface, index(0), port.iface, index(1), self.namespaces[1])
        elif self.hub:  # a switch: one bridge per port kind, one veth per node
            bridge = f"br{k}"
            ops.add_bridge(self.hub, bridge)
            ops.set_link(self.hub, bridge, up=True)
            for i, ns in enumerate(self.namespaces):
                hub_end = f"h{k}n{i}"
                ops.add_veth(self.hub, hub_end, index(i, hub=True), port.iface, index(i), ns)
                ops.set_link(self.hub, hub_end, mtu=self.mtu, master=bridge, up=True)
        else:  # a lone node: the far end stays in the node, so the link is still up
            ops.add_veth(self.namespaces[0], port.iface, index(0), f"peer{k}", index(0, hub=True), None)
            ops.set_link(self.namespaces[0], f"peer{k}", up=True)
        nodes = []
        for i, ns in enumerate(self.namespaces):
            node = SimNode(i, ns, port.iface, f"{port.subnet}.{10 + i}", port.prefixlen,
                           self.sysfs_root(i), port.roce_device, ops.exec_prefix(ns))
            ops.set_link(ns, port.iface, mtu=self.mtu)
            if address:
                self.add_address(node)
            ops.set_link(ns, port.iface, up=True)
            self._write_sysfs(node, port, address)
            nodes.append(node)
        self.wait_settled()
        return tuple(nodes)

    def _write_sysfs(self, node: SimNode, port: Port, address: bool = True) -> None:
        net = Path(node.sysfs_root, "class", "net", port.iface)
        net.mkdir(parents=True)
        (net / "speed").write_text(f"{port.speed_mbps}\n")
        for attr in LIVE_ATTRS:
            (net / attr).symlink_to(f"/sys/class/net/{port.iface}/{attr}")
        if port.roce_device:
            Path(node.sysfs_root, "class", "infiniband", port.roce_device, "device", "net",
                 port.iface).mkdir(parents=True)
            write_gids(node.sysfs_root, port.roce_device, spark_gids(port.iface, node.index,
                                                                    node.ip if address else None))

    # --- changing a node (tests) ---------------------------------------------------
    def set_link(self, node: SimNode, up: bool) -> None:
        """`ip link set IF up|down` in the node, then wait until every end of the cable
        shows it: the kernel applies operstate changes up to a second late
        (linkwatch), and a reader must not see the old state."""
        self.ops.set_link(node.netns, node.iface, up=up)
        self.wait_settled()

    def add_address(self, node: SimNode, cidr: str | None = None) -> None:
        self.ops.address(node.netns, node.iface, cidr or node.cidr)

    def remove_address(self, node: SimNode, cidr: str | None = None) -> None:
        self.ops.address(node.netns, node.iface, cidr or node.cidr, add=False)

    def wait_settled(self, timeout_s: float = 5.0) -> None:
        """Until every link's operstate agrees with its carrier (UP iff LOWER_UP)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pending = [f"{ns}:{name}" for ns in self._created for name, flags, state in self.ops.links(ns)
                       if state != "UNKNOWN" and ("LOWER_UP" in flags) != (state == "UP")]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise SimulationError(f"links did not settle in {timeout_s} s: {', '.join(pending)}", HINT)
            time.sleep(0.05)

    def add_twin(self, address: bool = True) -> tuple[SimNode, ...]:
        """The port's twin on every node: `enP2p1s0f1np1`, roceP2p1s0f1, 192.168.101.x."""
        return self._connect(TWIN, address)

    def add_management(self, default_route: bool = True) -> tuple[SimNode, ...]:
        """The 10 GbE `enP7s7` on every node: no RoCE, and the default route."""
        nodes = self._connect(MANAGEMENT)
        if default_route:
            for n in nodes:
                self.ops.default_route(n.netns, MANAGEMENT_GATEWAY, n.iface)
        return nodes

    # --- tearing down -----------------------------------------------------------
    def close(self, raise_errors: bool = False) -> None:
        """Kill what runs in the namespaces, delete them and the sysfs trees.

        Every step runs even when one fails or Ctrl-C arrives; an interrupt is
        re-raised once everything is gone.
        """
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"namespace {ns}", lambda ns=ns: remove_namespace(ns, self.kill_grace_s, self.ops)) for ns in reversed(self._created)
        ]
        if self._tmp:
            steps.append((f"directory {self._tmp}", lambda d=self._tmp: shutil.rmtree(d)))
        failures, interrupt = [], None
        for what, step in steps:
            try:
                step()
            except KeyboardInterrupt as exc:
                interrupt = exc
            except Exception as exc:  # keep going: the next step may still succeed
                failures.append(f"{what}: {exc}")
        self._created, self._tmp, self.nodes = [], None, ()
        if interrupt:
            raise interrupt
        if failures:
            log.warning("simulated network not fully removed: %s", "; ".join(failures))
            if raise_errors:
                raise SimulationError(f"cleanup failed: {'; '.join(failures)}",
                                      f"remove leftovers with cleanup_stale({self.prefix!r})")


# --- fake GID tables -------------------------------------------------------------
GID_SLOTS = 8  # a real port has 255 (mostly all-zero); a few unused ones are kept


def spark_gids(iface: str, index: int, ipv4: str | None) -> dict[int, tuple[str, str, str]]:
    """A ConnectX-7 port's table as mlx5 fills it: the link-local GID as RoCE v1 and v2
    (0, 1), then the IPv4-mapped GID as v1 and v2 (2, 3) once the port has an address."""
    link_local = f"fe80:0000:0000:0000:0e42:a1ff:fe{index:02x}:{0x10 + index:04x}"
    table = {0: (link_local, "IB/RoCE v1", iface), 1: (link_local, "RoCE v2", iface)}
    if ipv4:
        a, b, c, d = (int(x) for x in ipv4.split("."))
        mapped = f"0000:0000:0000:0000:0000:ffff:{a << 8 | b:04x}:{c << 8 | d:04x}"
        table.update({2: (mapped, "IB/RoCE v1", iface), 3: (mapped, "RoCE v2", iface)})
    return table


def write_gids(sysfs_root: str, device: str, table: dict[int, tuple[str, str, str]], port: int = 1) -> None:
    """`ports/P/gids/N`, `gid_attrs/types/N`, `gid_attrs/ndevs/N` of a fake device,
    replacing what was there; unused slots read as zeros and have no attributes."""
    base = Path(sysfs_root, "class", "infiniband", device, "ports", str(port))
    for sub in ("gids", "gid_attrs/types", "gid_attrs/ndevs"):
        shutil.rmtree(base / sub, ignore_errors=True)
        (base / sub).mkdir(parents=True)
    for n in range(max(GID_SLOTS, max(table, default=0) + 1)):
        gid, kind, ndev = table.get(n, (":".join(["0000"] * 8), None, None))
        (base / "gids" / str(n)).write_text(gid + "\n")
        if kind:
            (base / "gid_attrs" / "types" / str(n)).write_text(kind + "\n")
            (base / "gid_attrs" / "ndevs" / str(n)).write_text(ndev + "\n")


# --- module helpers ---------------------------------------------------------------
def available(backend: str | None = None) -> str | None:
    """Why namespaces cannot be built here (with `backend`, default `ip` where it is
    installed, else pyroute2), or None when they can."""
    return nsops.unavailable(backend or ("ip" if shutil.which("ip") else "pyroute2"))


def terminate(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGTERM to one process we started (what `spark-vllm stop` sends), SIGKILL if it
    is still there after `timeout`; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_empty(namespaces: tuple[str, ...], timeout_s: float = 15.0) -> dict[str, list[int]]:
    """The pids still in each namespace once all are empty or `timeout_s` passed
    (processes stopped by SIGTERM take a moment to go)."""
    deadline = time.monotonic() + timeout_s
    while any((left := {ns: pids(ns) for ns in namespaces}).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def end_processes(ns: str, grace_s: float = 2.0, kill_wait_s: float = 1.0) -> None:
    """SIGTERM the processes inside `ns`, then SIGKILL those still there after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        left = pids(ns)
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = pids(ns)
        if not left:
            break


def remove_namespace(ns: str, grace_s: float = 2.0, ops: nsops.NsOps | None = None) -> None:
    """SIGTERM the processes inside `ns`, SIGKILL those still there after `grace_s`,
    then delete it (if it exists)."""
    end_processes(ns, grace_s)
    if ns in list_namespaces(ns):
        (ops or nsops.ops_for(None)).del_netns(ns)


def kill_processes(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL everything in `ns`, again until nothing is left (a dying raylet may still
    be forking): a whole machine gone at once. The namespace stays."""
    deadline = time.monotonic() + timeout
    while (left := pids(ns)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def cleanup_stale(prefix: str = "svsim") -> list[str]:
    """Remove namespaces and sysfs trees named `{prefix}-PID-...` whose PID is dead
    (a run killed before it could clean up). Returns what was removed."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)-[0-9a-f]+-")
    removed = []
    for ns in list_namespaces(prefix):
        m = pattern.match(ns)
        if m and not psutil.pid_exists(int(m.group(1))):
            remove_namespace(ns)
            removed.append(ns)
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob(f"{prefix}-*"):
        m = pattern.match(d.name)
        if m and d.is_dir() and not psutil.pid_exists(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed
