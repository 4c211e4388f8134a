"""Which libnccl torch loads on this machine (path, version, SHA-256), and which other
NCCL builds the system has (issue 20 records it). One JSON file out.

    python3 scripts/gpu/nccl_report.py OUT.json
"""

from __future__ import annotations

import glob
import hashlib
import json
import subprocess
import sys


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(out: str) -> None:
    import torch

    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "nccl_version": ".".join(map(str, torch.cuda.nccl.version()))}
    torch.zeros(1, device="cuda")  # loads CUDA and the collective libraries as a run would
    with open("/proc/self/maps") as f:
        loaded = sorted({line.split()[-1] for line in f if "libnccl" in line})
    report["loaded"] = [{"path": p, "sha256": sha256(p)} for p in loaded]
    candidates = set()
    for pattern in ("/usr/lib/**/libnccl*.so*", "/usr/local/**/libnccl*.so*", "/opt/**/libnccl*.so*"):
        candidates.update(glob.glob(pattern, recursive=True))
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    report["ldconfig"] = [ln.strip() for ln in ldconfig.splitlines() if "nccl" in ln]
    report["on_disk"] = [{"path": p, "sha256": sha256(p)} for p in sorted(candidates)
                         if not p.endswith(".a") and not glob.os.path.islink(p)]
    report["other_builds"] = sorted({d["sha256"] for d in report["on_disk"]} - {d["sha256"] for d in report["loaded"]})
    print(json.dumps(report, indent=2))
    with open(out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
