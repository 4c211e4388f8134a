"""The caches a restart needs, as environment variables under one folder (pure).

vLLM keeps its compiled model under VLLM_CACHE_ROOT (`torch_compile_cache/`, with
inductor's artifacts inside), Triton its kernels under TRITON_CACHE_DIR (default
~/.triton/cache), inductor what it builds outside vLLM's folder under
TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_USER, lost with the container),
FlashInfer its JIT-built kernels under FLASHINFER_WORKSPACE_BASE/.cache/flashinfer.
With all four under one folder that outlives the process (a host folder mounted into
the container; each simulated Spark's own folder), a restart loads what the first
start compiled instead of compiling again.
"""

from __future__ import annotations

import posixpath

# Variable -> its folder under the root. FlashInfer's variable names a base that it
# extends with `.cache/flashinfer` itself.
CACHE_DIRS = (
    ("VLLM_CACHE_ROOT", "vllm"),
    ("TRITON_CACHE_DIR", "triton"),
    ("TORCHINDUCTOR_CACHE_DIR", "torchinductor"),
    ("FLASHINFER_WORKSPACE_BASE", "flashinfer"),
)


def cache_env(root: str) -> dict[str, str]:
    """The variables that put every cache a restart needs under `root` (a POSIX path,
    as seen by the processes that use it)."""
    return {name: posixpath.join(root, sub) for name, sub in CACHE_DIRS}
