"""The playbook's two requests, sent the way a user would, printed as JSON.

Run inside a simulated Spark's namespace by the demo (`python -m
orchestrator.sim.client URL MODEL`); stdlib only, so it needs nothing extra.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

CHAT = "12*17"
HAIKU = "Write a haiku about a GPU"


def post(url: str, body: dict, timeout: float = 120.0) -> dict:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("VLLM_API_KEY"):  # the server's --api-key, handed over in the environment
        headers["Authorization"] = f"Bearer {os.environ['VLLM_API_KEY']}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def ask(base: str, model: str, max_tokens: int = 32) -> dict:
    t0 = time.monotonic()
    chat = post(f"{base}/v1/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": CHAT}], "max_tokens": max_tokens})
    t1 = time.monotonic()
    comp = post(f"{base}/v1/completions", {"model": model, "prompt": HAIKU, "max_tokens": max_tokens})
    t2 = time.monotonic()
    return {
        "chat": {"prompt": CHAT, "answer": chat["choices"][0]["message"]["content"],
                 "tokens": chat["usage"]["completion_tokens"], "seconds": round(t1 - t0, 3)},
        "completion": {"prompt": HAIKU, "answer": comp["choices"][0]["text"],
                       "tokens": comp["usage"]["completion_tokens"], "seconds": round(t2 - t1, 3)},
    }


if __name__ == "__main__":
    json.dump(ask(sys.argv[1], sys.argv[2]), sys.stdout)
