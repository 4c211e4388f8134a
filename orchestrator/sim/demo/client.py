"""Greedy requests sent the way a user would, printed as JSON.

Run inside a simulated Spark's namespace by the demo and the tests:
`python -m orchestrator.sim.demo.client URL MODEL [--max-tokens N] [PROMPT ...]` sends
the playbook's two requests (a chat and a completion), or one completion per
PROMPT. Every request is greedy (temperature 0) and asks vLLM for the token ids
(`return_token_ids`), so that `orchestrator.sim.demo.greedy` can hold the answer
against single-process generation. Stdlib only, so it needs nothing extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request

CHAT = "What is 12*17?"
HAIKU = "Write a haiku about a GPU"


def post(url: str, body: dict, timeout: float = 120.0) -> dict:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("VLLM_API_KEY"):  # the server's --api-key, handed over in the environment
        headers["Authorization"] = f"Bearer {os.environ['VLLM_API_KEY']}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def greedy(base: str, model: str, prompt: str, max_tokens: int, chat: bool) -> dict:
    """One greedy request; the answer with its prompt's and its own token ids."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    t0 = time.monotonic()
    if chat:
        r = post(f"{base}/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]})
        choice, prompt_ids = r["choices"][0], r["prompt_token_ids"]
        text = choice["message"]["content"]
    else:
        r = post(f"{base}/v1/completions", {**body, "prompt": prompt})
        choice = r["choices"][0]
        text, prompt_ids = choice["text"], choice["prompt_token_ids"]
    return {"prompt": prompt, "answer": text, "tokens": r["usage"]["completion_tokens"],
            "seconds": round(time.monotonic() - t0, 3), "prompt_token_ids": prompt_ids,
            "token_ids": choice["token_ids"]}


def ask(base: str, model: str, max_tokens: int = 32) -> dict:
    """The playbook's two requests."""
    return {"chat": greedy(base, model, CHAT, max_tokens, chat=True),
            "completion": greedy(base, model, HAIKU, max_tokens, chat=False)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("model")
    p.add_argument("prompts", nargs="*")
    p.add_argument("--max-tokens", type=int, default=32)
    a = p.parse_intermixed_args()
    answers = ({f"p{i}": greedy(a.url, a.model, text, a.max_tokens, chat=False) for i, text in enumerate(a.prompts)}
               if a.prompts else ask(a.url, a.model, a.max_tokens))
    json.dump(answers, sys.stdout)
