"""spark-vllm's own Prometheus metrics, in vLLM's `/metrics`.

vLLM's API server (one process, the default) exposes prometheus_client's default
registry at `/metrics`; a collector registered there from the same process shows up
beside vLLM's own series. The collector reads its values at scrape time: the cluster
from Ray's node table, the fabric link from netlink/sysfs, the rest from
`ServingState`, which the serving code (and a supervisor) updates. Labels carry
interface names and phases only, never a secret.

Documented in docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ...cluster.nodes import ClusterState
from ...net.discovery import Interface
from ..diagnosis.fabriccheck import FabricCheck

log = logging.getLogger("spark_vllm")
PREFIX = "spark_vllm_"
NODE_LOST, WEDGED = "node-lost", "wedged"  # why the engine restarted
WEDGE_CAUSES = ("stall", "probe")  # the watchdog's (watchdog.STALL, watchdog.PROBE)


@dataclass
class ServingState:
    """What the serving process knows that Ray and netlink do not. Thread-safe updates:
    the scrape runs on vLLM's event loop thread."""

    want: int = 2
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    restarts: dict[str, int] = field(default_factory=dict)  # cause -> engine restarts
    wedges: dict[str, int] = field(default_factory=dict)  # watchdog cause (stall, probe) -> wedges seen
    probes: int = 0  # the watchdog's idle probe requests
    node_loss_detection_s: float | None = None  # the last loss, from its cause to noticing it
    fabric: FabricCheck | None = None  # the check before vLLM started
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fabric_checked(self, check: FabricCheck | None) -> None:
        if check is not None:
            self.phase("fabric_check", check.seconds)
            with self._lock:
                self.fabric = check

    def phase(self, name: str, seconds: float) -> None:
        with self._lock:
            self.phases[name] = seconds

    def engine_restarted(self, cause: str = NODE_LOST) -> None:
        with self._lock:
            self.restarts[cause] = self.restarts.get(cause, 0) + 1

    def wedged(self, cause: str) -> None:
        with self._lock:
            self.wedges[cause] = self.wedges.get(cause, 0) + 1

    def probed(self) -> None:
        with self._lock:
            self.probes += 1

    def node_lost(self, detection_s: float) -> None:
        with self._lock:
            self.node_loss_detection_s = detection_s


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # "gauge" or "counter"
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


def samples(state: ServingState, cluster: ClusterState | None, link: Interface | None) -> list[Sample]:
    """Pure: the series for one scrape. A source that could not be read adds nothing."""
    out = []
    if cluster is not None:
        out += [
            Sample("nodes_alive", "gauge", "Alive Ray nodes with GPUs", len(cluster.gpu_nodes)),
            Sample("nodes_wanted", "gauge", "GPU nodes the cluster should have (--nodes)", cluster.want),
            Sample("gpus", "gauge", "GPUs in the cluster's alive nodes", cluster.gpus),
        ]
    if link is not None:
        labels = (("iface", link.name),)
        out.append(Sample("fabric_link_up", "gauge", "1 when the fabric port is up", 1.0 if link.up else 0.0, labels))
        if link.speed_mbps:
            out.append(Sample("fabric_link_speed_bits_per_second", "gauge", "The fabric port's link speed",
                              link.speed_mbps * 1e6, labels))
    with state._lock:
        phases, restarts, loss = dict(state.phases), dict(state.restarts), state.node_loss_detection_s
        wedges, probes = dict(state.wedges), state.probes
        check = state.fabric
    if check is not None:
        out.append(Sample("fabric_bus_bandwidth_bytes_per_second", "gauge",
                          "Peak all-reduce bus bandwidth of the fabric check before vLLM started",
                          check.busbw_gbps * 1e9, (("backend", check.backend), ("verdict", check.status))))
        out += [Sample("fabric_transport", "gauge", "The transport NCCL chose on each node in the fabric check "
                       "(NET/IB, NET/Socket; gloo/TCP on the CPU simulation)", 1.0,
                       (("node", ip), ("transport", transport))) for ip, transport in check.transports]
    out += [Sample("phase_duration_seconds", "gauge", "How long each start-up phase took", v, (("phase", k),))
            for k, v in sorted(phases.items())]
    # Every cause from the start (at 0), so that increase() sees the first one.
    out += [Sample("engine_restarts", "counter", "Engine restarts, by cause (a lost node, a wedged engine)",
                   restarts.get(c, 0), (("cause", c),)) for c in (NODE_LOST, WEDGED)]
    out += [Sample("engine_wedges", "counter", "Wedged engines seen by the watchdog, by how (stall: requests "
                   "running and no token; probe: an idle probe request unanswered)", wedges.get(c, 0),
                   (("cause", c),)) for c in WEDGE_CAUSES]
    out.append(Sample("watchdog_probes", "counter", "One-token probe requests the watchdog sent while idle "
                      "(they count in vLLM's own request metrics)", probes))
    if loss is not None:
        out.append(Sample("node_loss_detection_seconds", "gauge",
                          "Time from the last node loss to its detection", loss))
    return out


class SparkCollector:
    """A prometheus_client collector over `samples`; readers are injected (Ray's node
    table, the fabric interface), each failure logged once and skipped."""

    def __init__(self, state: ServingState, read_cluster: Callable[[], ClusterState],
                 read_link: Callable[[], Interface | None]) -> None:
        self.state, self.read_cluster, self.read_link = state, read_cluster, read_link
        self._warned: set[str] = set()

    def _read(self, what: str, reader: Callable):
        try:
            return reader()
        except Exception as exc:  # a scrape must never fail because one source did
            if what not in self._warned:
                self._warned.add(what)
                log.warning("metrics: could not read the %s: %s", what, exc)
            return None

    def describe(self) -> Iterable:
        return []  # unchecked collector: series come and go (phases, a loss)

    def collect(self) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        found = samples(self.state, self._read("cluster", self.read_cluster), self._read("fabric link", self.read_link))
        families: dict[str, object] = {}
        for s in found:
            fam = families.get(s.name)
            if fam is None:
                kind = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
                fam = families[s.name] = kind(PREFIX + s.name, s.help, labels=[k for k, _ in s.labels])
            fam.add_metric([v for _, v in s.labels], s.value)
        return list(families.values())


class Poller:
    """Reads a source every `interval` seconds in a daemon thread; `latest()` returns the
    last value, or None when it is older than `stale` seconds. A scrape runs on vLLM's
    event loop: Ray's node table, read there, would stall every request while the GCS
    is unreachable (Ray retries for many seconds)."""

    def __init__(self, reader: Callable, interval: float = 5.0, stale: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reader, self.interval, self.stale, self.clock = reader, interval, stale, clock
        self._value, self._at, self._error = None, None, None
        self._stop = threading.Event()

    def poll_once(self) -> None:
        try:
            value = self.reader()
        except Exception as exc:  # kept for latest(): a scrape shows nothing rather than old data
            self._error = exc
            return
        self._value, self._at, self._error = value, self.clock(), None

    def start(self) -> "Poller":
        def loop():
            while not self._stop.is_set():
                self.poll_once()
                self._stop.wait(self.interval)

        threading.Thread(target=loop, name="spark-vllm-metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def latest(self):
        if self._at is None or self.clock() - self._at > self.stale:
            raise self._error or LookupError("no fresh reading yet")
        return self._value


def register(collector: SparkCollector, registry=None) -> None:
    """Into prometheus_client's default registry: the one vLLM's `/metrics` serves."""
    from prometheus_client import REGISTRY

    (registry or REGISTRY).register(collector)
