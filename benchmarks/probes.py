"""Probes run inside a simulated Spark by `benchmarks.side_by_side` (stdlib, plus Ray
for `node-times`), each printing one JSON line:

    python -m benchmarks.probes first-token URL MODEL [TIMEOUT]
        polls URL/health until 200, then streams one completion; prints the wall
        clock (time.time()) of the healthy answer and of the first token;
    python -m benchmarks.probes node-times GCS_ADDRESS
        the time (wall clock, seconds) the GCS registered each node, by address.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def first_token(url: str, model: str, timeout: float = 600.0, poll: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not healthy after {timeout:g} s")
        time.sleep(poll)
    t_health = time.time()
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text") is not None:
                return {"health": t_health, "first_token": time.time()}
    raise SystemExit("the stream ended without a token")


def node_times(address: str) -> dict[str, float]:
    """Registration time of each alive node in the GCS (GcsNodeInfo.start_time_ms), read
    with Ray's GCS client (no driver, so nothing joins the cluster)."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    infos = GcsClient(address=address).get_all_node_info(timeout=30)
    return {info.node_manager_address: info.start_time_ms / 1000 for info in infos.values()
            if info.state == GcsNodeInfo.GcsNodeState.ALIVE}


if __name__ == "__main__":
    what, *rest = sys.argv[1:]
    if what == "first-token":
        out = first_token(rest[0], rest[1], *(float(x) for x in rest[2:3]))
    elif what == "node-times":
        out = node_times(rest[0])
    else:
        raise SystemExit(f"unknown probe {what}")
    print(json.dumps(out), flush=True)
