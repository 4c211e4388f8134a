"""PNG plots of benchmarks/results/latest.json (matplotlib, no display needed):

- cold_start_phases.png: where the time to the first token goes, ours above theirs;
- serving.png: output tokens/s and TTFT p50 against concurrency, both servers.

    .venv/bin/python -m benchmarks.plots [results/latest.json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# Segment names: a mark's label is the phase that ends at it.
PHASES = {
    "vllm_flags_checked": "vLLM import + flag check",
    "ray_started": "Ray head start",
    "ray_head_started": "ray start --head",
    "ray_worker_joined": "ray start --address",
    "cluster_complete": "cluster complete",
    "healthy": "engine build (to /health)",
    "first_token": "first token",
}
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"]


def median_marks(pairs: list[dict], who: str) -> list[tuple[str, float]]:
    """Each mark's median over the pairs, in time order."""
    names = pairs[0][who]["marks_s"].keys()
    marks = []
    for name in names:
        vals = [p[who]["marks_s"][name] for p in pairs if p[who]["marks_s"].get(name) is not None]
        if vals:
            marks.append((name, statistics.median(vals)))
    return sorted(marks, key=lambda m: m[1])


def plot_phases(report: dict, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cold = report.get("scenarios", {}).get("cold_start")
    if not cold:
        return None
    fig, ax = plt.subplots(figsize=(8, 2.8), dpi=90)
    seen: dict[str, str] = {}
    for row, who in enumerate(("theirs", "ours")):
        start = 0.0
        for name, t in median_marks(cold["pairs"], who):
            label = PHASES.get(name, name)
            color = seen.setdefault(label, COLORS[len(seen) % len(COLORS)])
            if t > start:
                ax.barh(row, t - start, left=start, color=color, edgecolor="white",
                        label=label if label not in ax.get_legend_handles_labels()[1] else None)
            start = max(start, t)
        ax.text(start + 0.5, row, f"{start:.1f} s", va="center", fontsize=8)
    ax.set_yticks([0, 1], ["shell flow", "spark-vllm"])
    ax.set_xlabel("seconds from the first command; each phase ends at its mark (median of the pairs)")
    ax.set_title(f"cold start to the first token (ratio {cold['ratio']['median']:.2f})", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=4, frameon=False)
    fig.tight_layout()
    path = out / "cold_start_phases.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_serving(report: dict, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    serving = report.get("scenarios", {}).get("serving_throughput")
    if not serving:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.8), dpi=90)
    for who, style in (("ours", "o-"), ("theirs", "s--")):
        curve = serving["curve"][who]
        c = [lv["concurrency"] for lv in curve]
        label = "spark-vllm" if who == "ours" else "shell flow"
        a.plot(c, [lv["output_tok_s"] for lv in curve], style, label=label)
        b.plot(c, [lv["ttft_p50_ms"] for lv in curve], style, label=label)
    for ax, title in ((a, "output tokens/s"), (b, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "serving.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(report: dict, out: Path) -> list[Path]:
    return [p for p in (plot_phases(report, out), plot_serving(report, out)) if p]


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    for p in plot_all(json.loads(src.read_text()), src.parent):
        print(p)
