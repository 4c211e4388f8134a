"""Which NCCL this machine's torch loads, as spark-vllm's version check and doctor see
it, checked against what the process really maps. Prints one JSON object.

Stdlib and torch only; spark-vllm need not be installed, only on PYTHONPATH:

    PYTHONPATH=. python3 scripts/gpu/nccl_report.py [--no-preload-check]

- "report": orchestrator.cluster.nccl.node_report() (no torch import: ldd's resolution
  of libtorch_cuda.so, each file's banner version and sha256, the other builds found
  in the loader's cache, the usual lib dirs and the nvidia-nccl-cu* wheel);
- "actual": after `import torch` and an NCCL call, the libnccl files in /proc/self/maps
  and torch.cuda.nccl.version();
- "agrees": whether the report's path is the mapped one;
- "preload": for every other build, a child process started with what
  `--nccl-library PATH` sets (LD_PRELOAD, VLLM_NCCL_SO_PATH): does torch then map it,
  and which version does NCCL itself report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from orchestrator.cluster import nccl


def actual() -> dict:
    """What this process maps once torch has called into NCCL."""
    start = time.monotonic()
    import torch

    out: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        out["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as exc:  # a CPU build, or NCCL missing
        out["nccl_version_error"] = f"{type(exc).__name__}: {exc}"
    with open("/proc/self/maps") as f:
        out["mapped"] = sorted({line.split()[-1] for line in f if "libnccl" in line and "/" in line})
    out["mapped_real"] = sorted({os.path.realpath(p) for p in out["mapped"]})
    out["import_s"] = round(time.monotonic() - start, 2)
    return out


def main() -> int:
    if "--actual-only" in sys.argv:  # the child of the preload check
        print(json.dumps(actual()))
        return 0
    t0 = time.monotonic()
    report = nccl.node_report(os.environ)
    result = {"report": report.to_json(), "report_s": round(time.monotonic() - t0, 2)}
    mapped = actual()
    result["actual"] = mapped
    result["agrees"] = None if report.torch is None else report.torch.path in mapped["mapped_real"]
    if "--no-preload-check" not in sys.argv:
        checks = []
        for other in report.others:
            env = {**os.environ, **nccl.library_env(other.path, os.environ)}
            r = subprocess.run([sys.executable, __file__, "--actual-only"], capture_output=True, text=True,
                               env=env, timeout=300)
            child = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {"error": r.stderr[-2000:]}
            checks.append({"path": other.path, "version": other.version, "child": child,
                           "predicted": nccl.node_report(env, with_others=False).to_json()["torch"],
                           "loaded_it": other.path in child.get("mapped_real", [])})
        result["preload"] = checks
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
