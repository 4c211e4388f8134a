"""What `serve`'s fabric check adds to the start, on two simulated Sparks, as JSON.

Rounds alternate `serve` with the check (the default) and with `--no-fabric-check`;
each round starts both Sparks at once and waits for the head's "ready" (cold start).
Measured: `check_s`, the check's own duration as serve logs it ("fabric check (X s)"),
the peak Gloo bus bandwidth it reported, and `ready_s` of each kind of round (the
difference of the medians is noisier than `check_s` on 2 shared cores). Needs root.

    .venv/bin/python -m benchmarks.fabric_check [ROUNDS]   (default 2: one of each)
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from orchestrator.sim.demo.run import serving_cluster
from orchestrator.sim.models.tinymodel import make_tiny_model

RESULTS = Path(__file__).resolve().parent / "results" / "fabric_check.json"
CHECK_LINE = re.compile(r"^fabric check \(([\d.]+) s\): ([\d.]+) GB/s")


def one_round(workdir: Path, model: str, check: bool) -> dict:
    lines: list[str] = []
    flags = () if check else ("--no-fabric-check",)
    with serving_cluster(workdir, model, lambda who, line: lines.append(line) if who == "head" else None,
                         prefix="svfab", flags=flags) as sim:
        ready_s = sim.ready_s
    found = [m for line in lines if (m := CHECK_LINE.match(line))]
    return {"check": check, "ready_s": round(ready_s, 2),
            "check_s": float(found[0].group(1)) if found else None,
            "busbw_gbps": float(found[0].group(2)) if found else None}


def main(rounds: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="svfab-") as tmp:
        model = str(make_tiny_model(Path(tmp) / "tiny-llama"))
        runs = []
        for i in range(rounds):
            workdir = Path(tmp) / f"round{i}"
            workdir.mkdir()
            runs.append(one_round(workdir, model, check=i % 2 == 0))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    def median(key: str, check: bool):
        values = [r[key] for r in runs if r["check"] == check and r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    result = {"runs": runs, "check_s_median": median("check_s", True),
              "ready_s_median_with_check": median("ready_s", True),
              "ready_s_median_without_check": median("ready_s", False)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2), indent=2))
