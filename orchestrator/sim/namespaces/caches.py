"""Each simulated Spark's own compile caches, as two machines have (pure).

The simulated Sparks share one filesystem: left alone, both would compile into one
~/.cache/vllm, one ~/.triton and one /tmp/torchinductor_USER, which two Sparks never
do. `node_env` gives node i the folder `BASE/node<i>` for every cache a restart needs
(`ops.deployment.caches`, the container's list), in the demo, the tests and the
benchmarks alike; a BASE that persists (the harness's) keeps each node's caches warm
from one run to the next, as a Spark's disk does.

vLLM's own root is given as XDG_CACHE_HOME (vLLM's default is `$XDG_CACHE_HOME/vllm`),
not as VLLM_CACHE_ROOT: vLLM's Ray executor copies every VLLM_* variable of the head's
engine to the workers on every node (`vllm.ray.ray_env.get_env_vars_to_copy`), which
would point the worker Spark back at the head's folder. An inherited VLLM_CACHE_ROOT
is dropped for the same reason. The Hugging Face cache stays where it was (HF_HOME
pinned), so moving XDG_CACHE_HOME does not make the simulation fetch a model twice.

On the CPU engine, vLLM's AOT compile is turned off (VLLM_USE_AOT_COMPILE=0): vLLM 0.32's
CPU build saves an AOT artifact that it can never load ("Compiling model again due to a
load failure ... no attribute 'finalize_loading'", docs/performance.md), so every start
paid the failed load and the save again; without it a restart compiles from inductor's
warm cache only, as fast as the CPU build can restart. CUDA (the GPU simulation, a
Spark) loads its artifact and keeps vLLM's default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ...ops.deployment.caches import cache_env


def node_cache_root(base: str | Path, index: int) -> Path:
    """Node `index`'s cache folder under `base`."""
    return Path(base) / f"node{index}"


def hf_home(env: Mapping[str, str]) -> str:
    """Where huggingface_hub puts its cache under `env` (its own precedence)."""
    if env.get("HF_HOME"):
        return env["HF_HOME"]
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME", "/root"), ".cache")
    return os.path.join(xdg, "huggingface")


CPU_ENGINE_ENV = {"VLLM_USE_AOT_COMPILE": "0"}


def node_env(env: Mapping[str, str], base: str | Path, index: int, cpu: bool = True) -> dict[str, str]:
    """`env` for a process of simulated Spark `index`: its caches under `base/node<index>`;
    `cpu`: vLLM's CPU engine (False: the GPU simulation)."""
    root = str(node_cache_root(base, index))
    out = {k: v for k, v in env.items() if k != "VLLM_CACHE_ROOT"}
    out["HF_HOME"] = hf_home(env)
    out.update({k: v for k, v in cache_env(root).items() if k != "VLLM_CACHE_ROOT"})
    out["XDG_CACHE_HOME"] = root
    if cpu:
        out.update({k: v for k, v in CPU_ENGINE_ENV.items() if k not in env})  # a caller's own choice wins
    return out
