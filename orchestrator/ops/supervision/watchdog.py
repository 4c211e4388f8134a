"""The generation watchdog: notice an engine that is alive but generates nothing.

An NCCL collective that hangs, a stopped tensor-parallel rank, a CUDA-graph deadlock:
the processes live, Ray sees every node, `/health` answers 200, and no token comes out.
The watchdog is a daemon thread in the serving head's process (never on vLLM's event
loop). Every `poll` seconds (a twelfth of the stall timeout, between 0.5 and 5 s) it
reads vLLM's own counters from this process's Prometheus registry (`compat`: requests
running, tokens processed; a read costs microseconds, no Ray call, no I/O):
- requests running and no token processed for `stall` seconds: wedged;
- idle (nothing running, or vLLM's metrics off), every `probe_interval` seconds: one
  one-token completion to the local server; not finished within `stall` seconds:
  wedged. (An idle engine's counters cannot tell a stall: the frontend only updates them
  when the engine core sends a step.)
Once armed it notes what the engine holds (`reaper.snapshot`: its Ray workers and
placement group, the shared memory its processes map; one Ray call an engine start, never
in the loop). On a wedge it SIGKILLs vLLM's engine-core process, again at each poll until vLLM's server stopped: vLLM then
does what it does for a dead engine (/health 503, requests in flight fail, the server
ends), and `recovery` takes it from there.

Once the server is stopping (SIGTERM, SIGINT, `ray job stop`: `stopping` is set from
the server's own signal handling, `engine.run_server`), the watchdog stands down before
vLLM's shutdown starts: no probe (vLLM shuts its tokenizer pool before it drains, and
logs a traceback for any request that arrives then), no verdict (the drain's last
requests and a slow shutdown are no wedge). A probe in flight then is left to the drain;
whatever it comes back with counts for nothing.

Probe requests are recognisable: request id `spark-vllm-probe-N`, `user`
`spark-vllm-watchdog`, and a `?spark-vllm=probe` query that `quiet_probes` keeps out of
uvicorn's access log. vLLM has no way to leave a request out of its own metrics: they
count in `vllm:request_success_total` and the token counters (at most one a probe
interval, only while idle), and `spark_vllm_watchdog_probes_total` says how many.

`judge`, `probe_due` and `probe_verdict` are the pure decisions; `Watchdog` the thread.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from typing import Callable

from ...serve.compat import EngineCounters, read_engine_counters
from ...serve.health import health_state
from .supervisor import Watcher

log = logging.getLogger("spark_vllm")

DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_PROBE_INTERVAL = 30.0
STALL, PROBE = "stall", "probe"  # the causes, as labelled in /metrics
PROBE_MARK = "spark-vllm=probe"
PROBE_USER = "spark-vllm-watchdog"
OK, TIMEOUT, ERROR = "ok", "timeout", "error"


@dataclass(frozen=True)
class Wedge:
    """The engine stopped generating while its processes and nodes live."""

    cause: str  # STALL or PROBE
    reason: str
    silent_s: float  # from the last sign of progress to the detection

    def describe(self) -> str:
        return f"vLLM's engine is wedged: {self.reason}"


@dataclass(frozen=True)
class Watch:
    """What the watchdog remembers between two reads."""

    tokens: float | None = None  # vLLM's token counter at the last change
    progress_at: float = 0.0  # when it last changed, or the engine was last idle
    probe_at: float = 0.0  # when the last probe ended (or the watch began)


def poll_interval(stall: float) -> float:
    return min(5.0, max(0.5, stall / 12))


def judge(watch: Watch, counters: EngineCounters | None, now: float, stall: float) -> tuple[Watch, Wedge | None]:
    """Pure. The next `Watch`, and a `Wedge` when requests have been running for `stall`
    seconds without a token processed. Idle (nothing running) keeps the clock at now: a
    request that arrives later gets the full `stall`. Counters reset by an engine restart
    count as progress (a change, not an increase)."""
    if counters is None:
        return watch, None  # vLLM's metrics off or not registered yet: the probe decides
    if counters.tokens != watch.tokens or counters.running <= 0:
        return replace(watch, tokens=counters.tokens, progress_at=now), None
    silent = now - watch.progress_at
    if silent >= stall:
        return watch, Wedge(STALL, f"{counters.running:g} request(s) running and no token produced for "
                                   f"{silent:.1f} s (--stall-timeout {stall:g})", silent)
    return watch, None


def probe_due(watch: Watch, counters: EngineCounters | None, now: float, interval: float,
              stopping: bool = False) -> bool:
    """Pure: probe when probing is on, the server is not stopping, the engine looks idle
    (or its metrics are off), and the last probe ended `interval` seconds ago."""
    idle = counters is None or counters.running <= 0
    return interval > 0 and not stopping and idle and now - watch.probe_at >= interval


def probe_verdict(outcome: str, seconds: float, stall: float, stopping: bool = False) -> Wedge | None:
    """Pure: a probe that did not finish within the stall timeout is a wedge, unless the
    server began to stop meanwhile (its drain or shutdown held it). An error answer is
    not: vLLM said something (a dead engine is vLLM's own to report)."""
    if outcome == TIMEOUT and not stopping:
        return Wedge(PROBE, f"an idle one-token probe request did not finish within {stall:g} s "
                            "(--stall-timeout)", seconds)
    return None


class Prober:
    """One-token completions to the local server, recognisable (see the module's doc)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None) -> None:
        self.base_url, self.model, self.api_key, self.sent = base_url.rstrip("/"), model, api_key, 0

    def __call__(self, timeout: float) -> tuple[str, float]:
        """(OK, TIMEOUT or ERROR, seconds taken)."""
        self.sent += 1
        body = {"model": self.model, "prompt": "Hi", "max_tokens": 1, "temperature": 0, "user": PROBE_USER}
        headers = {"Content-Type": "application/json", "X-Request-Id": f"spark-vllm-probe-{self.sent}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/v1/completions?{PROBE_MARK}", json.dumps(body).encode(),
                                     headers)
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
            return OK, time.monotonic() - start
        except (TimeoutError, socket.timeout):
            return TIMEOUT, time.monotonic() - start
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                return TIMEOUT, time.monotonic() - start
            log.debug("watchdog: probe answered %s", exc)
            return ERROR, time.monotonic() - start
        except OSError as exc:  # refused, reset: the server is going or gone
            log.debug("watchdog: probe failed: %s", exc)
            return ERROR, time.monotonic() - start


class _QuietProbes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return PROBE_MARK not in str(record.args)


def quiet_probes() -> None:
    """Keep the probes' lines out of uvicorn's access log (vLLM's server logs through it)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _QuietProbes) for f in access.filters):
        access.addFilter(_QuietProbes())


class Watchdog(Watcher):
    """The thread. Arms itself once `health_url` answers 200 (an engine that is still
    building, or the last engine's stale gauges, are not judged) and then notes what the
    engine holds in `remains`; records a wedge in `wedge`, logs it, and kills the
    engine core. Stands down for good once `stopping` is set (the server is stopping)."""

    def __init__(self, health_url: str, probe: Callable[[float], tuple[str, float]],
                 stop_engine: Callable[[], list[int]], snapshot: Callable[[], object] = lambda: None,
                 stall: float = DEFAULT_STALL_TIMEOUT, probe_interval: float = DEFAULT_PROBE_INTERVAL,
                 read: Callable[[], EngineCounters | None] = read_engine_counters,
                 on_probe: Callable[[], None] = lambda: None, poll: float | None = None,
                 stopping: threading.Event | None = None) -> None:
        self._health_url, self._probe, self._stop_engine, self._snapshot = health_url, probe, stop_engine, snapshot
        self._stall, self._interval, self._read, self._on_probe = stall, probe_interval, read, on_probe
        self._poll = poll or poll_interval(stall)
        self._stopped = threading.Event()
        self._stopping = stopping or threading.Event()
        self.wedge: Wedge | None = None
        self.detected_at: float | None = None
        self.remains: object = None

    name = "spark-vllm-watchdog"

    def start(self) -> "Watchdog":
        quiet_probes()
        return super().start()

    def _run(self) -> None:
        watch = None
        while not self._stopped.wait(self._poll):
            if self.wedge is not None:
                pids = self._stop_engine()  # again until vLLM's server ended
                if pids:
                    log.info("killed vLLM's engine core on this head (pid %s) so that requests in flight fail "
                             "instead of hanging", ", ".join(map(str, pids)))
                continue
            if self._stopping.is_set():
                continue  # the server is stopping: nothing more to arm, judge or probe
            if watch is None:
                if health_state(self._health_url, timeout=2.0) == "healthy":
                    self._take_snapshot()  # once an engine: what to end if it wedges
                    now = time.monotonic()
                    watch = Watch(progress_at=now, probe_at=now)
                    log.debug("watchdog armed (stall %g s, probe every %g s)", self._stall, self._interval)
                continue
            try:
                watch = self._look(watch)
            except Exception as exc:  # a bug here must not end the watch
                log.warning("watchdog: %s", exc)

    def _look(self, watch: Watch) -> Watch:
        counters = self._read()
        watch, wedge = judge(watch, counters, time.monotonic(), self._stall)
        # `stopping` is read again at each step: the signal may come at any moment.
        if wedge is None and probe_due(watch, counters, time.monotonic(), self._interval, self._stopping.is_set()):
            self._on_probe()
            outcome, seconds = self._probe(self._stall)
            watch = replace(watch, probe_at=time.monotonic())
            wedge = probe_verdict(outcome, seconds, self._stall, self._stopping.is_set())
        if wedge is not None and not self._stopped.is_set() and not self._stopping.is_set():
            self._record(wedge)
        return watch

    def _take_snapshot(self) -> None:
        try:
            self.remains = self._snapshot()
        except Exception as exc:  # Ray's tables unreadable: the reaper looks again
            log.warning("watchdog: could not read what the engine holds in Ray: %s", exc)

    def _record(self, wedge: Wedge) -> None:
        log.warning("%s; ending it (engine core and tensor-parallel workers, on every node)", wedge.describe())
        if self.remains is None:
            self._take_snapshot()
        self.wedge, self.detected_at = wedge, time.monotonic()
        pids = self._stop_engine()
        log.info("killed vLLM's engine core on this head (pid %s) so that requests in flight fail instead of "
                 "hanging", ", ".join(map(str, pids)) or "none found")
