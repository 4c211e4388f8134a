"""What the generation watchdog costs the serving head's process, as JSON.

The watchdog runs beside vLLM in the API-server process, so its cost is GIL time taken
from vLLM's event loop. Measured here, in one process, with prometheus_client series
named and labelled as vLLM 0.32's (the watchdog reads them by name, so the registry's
other series do not matter) and a local stand-in server for /health and the probes:
- `look_us`: one look (read vLLM's counters + the pure judgement), median of 20,000;
- for each load (`busy`: requests running, tokens moving; `idle`: nothing running, so
  a probe every interval), the watchdog thread's own CPU time (from /proc, by its
  native thread id) over `seconds`, its wake-ups, and the probes sent, at the default
  --stall-timeout 60 (a look every 5 s) and at the shortest poll (0.5 s, a stall
  timeout of 6 s or less).

    .venv/bin/python -m benchmarks.watchdog_cost [seconds]     (default 30 a run)
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge

from orchestrator.ops.supervision.watchdog import Prober, Watch, Watchdog, judge
from orchestrator.serve.compat import read_engine_counters

RESULTS = Path(__file__).resolve().parent / "results" / "watchdog_cost.json"


def vllm_like_registry():
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge("vllm:num_requests_running", "", labels, registry=registry).labels("m", "0")
    tokens = Counter("vllm:generation_tokens", "", labels, registry=registry).labels("m", "0")
    Counter("vllm:prompt_tokens", "", labels, registry=registry).labels("m", "0").inc(10)
    return registry, running, tokens


def stand_in_server() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._ok()

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._ok()

        def _ok(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def look_us(registry) -> float:
    watch, times = Watch(), []
    for i in range(20_000):
        t = time.perf_counter()
        watch, _ = judge(watch, read_engine_counters(registry), float(i), 60.0)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def thread_cpu_s(name: str) -> float:
    me = psutil.Process()
    native = next(t.native_id for t in threading.enumerate() if t.name == name)
    found = [t for t in me.threads() if t.id == native]
    return found[0].user_time + found[0].system_time if found else 0.0


def run(load: str, stall: float, probe_interval: float, seconds: float) -> dict:
    registry, running, tokens = vllm_like_registry()
    httpd, url = stand_in_server()
    prober = Prober(url, "m")
    reads = [0]

    def read():
        reads[0] += 1
        if load == "busy":
            running.set(4)
            tokens.inc(50)  # tokens moving: no wedge, no probe
        else:
            running.set(0)
        return read_engine_counters(registry)

    dog = Watchdog(url + "/health", prober, list, stall=stall, probe_interval=probe_interval, read=read)
    with dog:
        time.sleep(seconds)
        cpu = thread_cpu_s("spark-vllm-watchdog")
    httpd.shutdown()
    httpd.server_close()
    return {"load": load, "stall_timeout_s": stall, "probe_interval_s": probe_interval, "seconds": seconds,
            "looks": reads[0], "probes": prober.sent, "thread_cpu_s": round(cpu, 4),
            "cpu_share_percent": round(100 * cpu / seconds, 4), "wedged": dog.wedge is not None}


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 30.0
    registry, _, _ = vllm_like_registry()
    out = {"machine": platform.node(), "cpus": psutil.cpu_count(), "look_us": round(look_us(registry), 2),
           "runs": [run(load, stall, probe, seconds)
                    for stall, probe in ((60.0, 30.0), (6.0, 3.0)) for load in ("busy", "idle")]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
