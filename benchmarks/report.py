"""The README's performance table and docs/performance.md's table of cold-start
phases, made from benchmarks/results/latest.json.

    .venv/bin/python -m benchmarks.report [results/latest.json]   # prints Markdown
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.plots import PHASES, median_marks

ROWS = (
    ("discovery", "discovery (in-process vs `ip \\| grep` + sysfs walk)", "lower"),
    ("cluster_formation", "cluster formation (worker start to head sees 2 GPU nodes)", "lower"),
    ("cold_start", "cold start to the first token", "lower"),
    ("serving_throughput", "serving throughput (output tok/s, highest concurrency)", "higher"),
    ("warm_restart", "second start on warm compile caches / first start (spark-vllm alone)", "lower"),
    ("recovery", "recovery after a lost worker / cold start (spark-vllm alone)", "lower"),
)


def fmt(r: dict) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f} to {r['max']:.2f}, n={r['n']})"


def markdown(report: dict) -> str:
    ratios, goals = report["ratios"], report.get("goals", {})
    lines = ["| ours / shell flow | ratio: median (spread) | better | goal | met |", "| --- | --- | --- | --- | --- |"]
    for key, label, better in ROWS:
        if key in ratios:
            g = goals.get(key, {})
            lines.append(f"| {label} | {fmt(ratios[key])} | {better} | {g.get('goal', '')} | "
                         f"{'yes' if g.get('met') else 'no'} |")
    sc = report.get("scenarios", {})
    for c, figures in sc.get("serving_throughput", {}).get("by_concurrency", {}).items():
        for key, label, better in (("output_tok_s", "output tok/s", "higher"), ("ttft_p50", "TTFT p50", "lower")):
            g = goals.get(f"serving_{key}_c{c}", {})
            lines.append(f"| serving at concurrency {c}: {label} | {fmt(figures[key])} | {better} | "
                         f"{g.get('goal', '')} | {'yes' if g.get('met') else 'no'} |")
    join = report.get("join_detection_s")
    if join:
        lines.append(f"| join detection: our log line after Ray registered the node | {join['median']:.2f} s "
                     f"({join['min']:.2f} to {join['max']:.2f}, n={join['n']}) | lower | <= 1 s | "
                     f"{'yes' if join['median'] <= 1 else 'no'} |")
    if "cold_start" in sc:
        c = sc["cold_start"]
        lines.append("")
        lines.append(f"Cold start, seconds to the first token (median of {c['ours_s']['n']}): spark-vllm "
                     f"{c['ours_s']['median']:.1f}, shell flow {c['theirs_s']['median']:.1f}.")
    return "\n".join(lines)


def cpu_markdown(report: dict) -> str:
    """CPU seconds by process on each simulated Spark during the highest-concurrency
    serving run, both flows side by side (medians over the pairs)."""
    serving = report.get("scenarios", {}).get("serving_throughput", {})
    cpu = serving.get("cpu_s_at_top")
    if not cpu:
        return ""
    nodes = sorted({n for who in cpu.values() for n in who})
    roles = sorted({r for who in cpu.values() for n in who.values() for r in n if r != "total"})
    head = " | ".join(f"{n} {name}" for n in nodes for name in ("spark-vllm", "shell flow"))
    lines = [f"| process (CPU s at concurrency {serving['concurrency']}) | {head} |",
             "| --- |" + " --- |" * (2 * len(nodes))]
    for r in roles + ["total"]:
        cells = " | ".join(f"{cpu[who].get(n, {}).get(r, 0.0):.1f}" for n in nodes for who in ("ours", "theirs"))
        lines.append(f"| {r} | {cells} |")
    return "\n".join(lines)


def phases_markdown(report: dict) -> str:
    """Each flow's cold-start marks, medians over the pairs in seconds from the first
    command, in time order: where a cold start's time goes."""
    cold = report.get("scenarios", {}).get("cold_start")
    if not cold:
        return ""
    lines = ["| flow | phase ends (median s from the first command) |", "| --- | --- |"]
    for who, name in (("ours", "spark-vllm"), ("theirs", "shell flow")):
        marks = ", ".join(f"{PHASES.get(m, m)} {t:.1f}" for m, t in median_marks(cold["pairs"], who))
        lines.append(f"| {name} | {marks} |")
    return "\n".join(lines)


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    report = json.loads(src.read_text())
    print(markdown(report) + "\n\n" + phases_markdown(report) + "\n\n" + cpu_markdown(report))
