"""Is the vLLM server up: its `/health` (200 when ready, 503 once the engine died,
connection refused while the engine builds), read once or watched until ready."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Callable


def local_health_url(host: str | None, port: int) -> str:
    """The server's /health as seen from its own machine (a wildcard bind is reachable on loopback)."""
    host = host if host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{port}/health"


def health_state(url: str, timeout: float = 3.0) -> str:
    """"healthy", "unhealthy (HTTP 503)" or "not running"."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return "healthy" if r.status == 200 else f"unhealthy (HTTP {r.status})"
    except urllib.error.HTTPError as e:
        return f"unhealthy (HTTP {e.code})"
    except OSError:
        return "not running"


def announce_when_ready(url: str, on_ready: Callable[[float], None], stop: threading.Event,
                        poll: float = 0.5) -> threading.Thread:
    """Background watcher: calls on_ready(seconds) once `url` answers 200; ends when
    `stop` is set (the server stopped before it was ready)."""
    start = time.monotonic()

    def watch():
        while not stop.is_set():
            if health_state(url, timeout=2.0) == "healthy":
                on_ready(time.monotonic() - start)
                return
            stop.wait(poll)

    t = threading.Thread(target=watch, name="spark-vllm-ready", daemon=True)
    t.start()
    return t


def api_key_state(base_url: str, timeout: float = 3.0) -> str:
    """Whether the server asks for an API key (`--api-key`), learned without one:
    "on" when `/v1/models` answers 401, "off" when it answers 200, else "unknown"."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/v1/models", timeout=timeout) as r:
            return "off" if r.status == 200 else "unknown"
    except urllib.error.HTTPError as e:
        return "on" if e.code == 401 else "unknown"
    except OSError:
        return "unknown"
