"""Requests in flight and the server's health, for the fault scenarios, as JSON lines.

    python -m orchestrator.sim.demo.load URL MODEL [--requests N] [--max-tokens M] [--timeout S]
    python -m orchestrator.sim.demo.load URL --watch-health

The first sends N streaming completions at once and reports each when its first
token arrives and when it ends: {"event": "first", "i": 0, "t": T} and {"event":
"end", "i": 0, "t": T, "ok": true, "status": 200, "tokens": 64, "finish": "length",
"error": null} (`tokens` as the server counts them, `finish` its finish_reason). The
second polls /health every 0.2 s and reports each change: {"event": "health", "t": T,
"status": 200} (0: no answer). `t` is the wall clock (time.time()), so that a test
can compare it with the moment it caused a fault. Stdlib only, run inside a
simulated Spark's namespace.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

PROMPT = "Write a long story about two machines joined by one cable"
_print_lock = threading.Lock()


def emit(**fields) -> None:
    with _print_lock:
        print(json.dumps(fields), flush=True)


def stream_one(i: int, base: str, model: str, max_tokens: int, timeout: float) -> None:
    # include_usage: the server's own token count (one chunk may carry several tokens).
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"{base}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    chunks, tokens, finish, status, error, done = 0, None, None, None, None, False
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status = r.status
            for raw in r:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = str(chunk["error"])[:300]
                    break
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices"):
                    chunks += 1
                    finish = chunk["choices"][0].get("finish_reason") or finish
                    if chunks == 1:
                        emit(event="first", i=i, t=round(time.time(), 3))
    except urllib.error.HTTPError as e:
        status, error = e.code, e.read().decode(errors="replace")[:300]
    except Exception as e:  # a reset connection or a timeout is what is being measured
        error = f"{type(e).__name__}: {e}"[:300]
    if not done and error is None:
        error = "stream ended without [DONE]"
    emit(event="end", i=i, t=round(time.time(), 3), ok=done and error is None, status=status,
         tokens=chunks if tokens is None else tokens, finish=finish, error=error)


def watch_health(base: str, poll: float = 0.2) -> None:
    last = None
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1.0) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except Exception:
            status = 0
        if status != last:
            emit(event="health", t=round(time.time(), 3), status=status)
            last = status
        time.sleep(poll)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.sim.demo.load")
    p.add_argument("url")
    p.add_argument("model", nargs="?")
    p.add_argument("--watch-health", action="store_true")
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=400)
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args(argv)
    if a.watch_health:
        watch_health(a.url)
        return 0
    threads = [threading.Thread(target=stream_one, args=(i, a.url, a.model, a.max_tokens, a.timeout))
               for i in range(a.requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


class Background:
    """This module run inside a simulated Spark (`node.popen`), its JSON lines collected
    in `events` as they come; `close()` ends it."""

    def __init__(self, node, *args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.proc = node.popen(sys.executable, "-m", "orchestrator.sim.demo.load", *args, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def wait(self, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """The first event matching `pred`; TimeoutError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in list(self.events) if pred(e)]
            if found:
                return found[0]
            time.sleep(0.1)
        raise TimeoutError(f"no {what} within {timeout:g} s; last events: {self.events[-10:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
