"""Serving benchmark: vLLM's own benchmark client (`vllm bench serve`), in-process,
against an OpenAI server, at several concurrencies.

`client_argv` (the client's flags for one level) and `level_result` (the figures
kept from the client's result dict) are pure; `run_level` runs the client once and
`run_bench` walks the levels, reporting progress through a callback. vLLM's own
printing goes to a buffer, so a caller's `--json` output stays clean.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from typing import Callable

from ...errors import BenchFailed, UsageError
from ...serve.compat import BENCH, drop_absent_flags, load_parser_class, vllm_version

# The client's metrics kept, as (our name, vLLM's key): p50 and p99 of each latency.
LATENCIES = (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"))


@dataclass(frozen=True)
class BenchRequest:
    base_url: str  # http://HOST:PORT (no /v1)
    model: str  # the served model name
    tokenizer: str | None = None  # path or hub id; default: the model
    concurrencies: tuple[int, ...] = (1, 4, 16)
    prompts_per_level: int | None = None  # default: 8 x concurrency, at least 16
    input_len: int = 64
    output_len: int = 32
    seed: int = 0

    def prompts(self, concurrency: int) -> int:
        return self.prompts_per_level or max(16, 8 * concurrency)


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: throughput and latency percentiles (milliseconds)."""

    concurrency: int
    completed: int
    failed: int
    duration_s: float
    output_tok_s: float
    request_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"concurrency {self.concurrency}: {self.output_tok_s:.1f} output tok/s, "
                f"TTFT p50 {self.ttft_p50_ms:.1f} ms p99 {self.ttft_p99_ms:.1f} ms, "
                f"TPOT p50 {self.tpot_p50_ms:.1f} ms, ITL p50 {self.itl_p50_ms:.1f} ms p99 {self.itl_p99_ms:.1f} ms "
                f"({self.completed} ok, {self.failed} failed, {self.duration_s:.1f} s)")


def client_argv(req: BenchRequest, concurrency: int) -> list[str]:
    """Pure: `vllm bench serve` flags for one level (random prompts of fixed length,
    EOS ignored so every request yields output_len tokens, greedy, one warm-up request
    per concurrent slot first, no progress bar)."""
    if concurrency < 1:
        raise UsageError(f"concurrency {concurrency} must be at least 1")
    return [
        "--backend", "openai", "--base-url", req.base_url.rstrip("/"), "--endpoint", "/v1/completions",
        "--model", req.model, "--tokenizer", req.tokenizer or req.model,
        "--dataset-name", "random", "--random-input-len", str(req.input_len),
        "--random-output-len", str(req.output_len), "--ignore-eos", "--temperature", "0",
        "--num-prompts", str(req.prompts(concurrency)), "--max-concurrency", str(concurrency),
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
        "--num-warmups", str(concurrency), "--seed", str(req.seed), "--disable-tqdm",
    ]


def level_result(concurrency: int, raw: dict) -> LevelResult:
    """Pure: the figures kept from the client's result dict."""
    try:
        lat = {f"{ours}_{p}_ms": float(raw[f"{p}_{theirs}_ms"])
               for ours, theirs in LATENCIES for p in ("p50", "p99")}
        return LevelResult(concurrency=concurrency, completed=int(raw["completed"]), failed=int(raw.get("failed", 0)),
                           duration_s=float(raw["duration"]), output_tok_s=float(raw["output_throughput"]),
                           request_s=float(raw["request_throughput"]), **lat)
    except KeyError as exc:
        raise BenchFailed(f"vLLM's benchmark client returned no {exc.args[0]}",
                          "this vLLM's `bench serve` result differs; see orchestrator/ops/observation/bench.py") from None


def run_level(req: BenchRequest, concurrency: int) -> LevelResult:
    """vLLM's benchmark client once, in this process."""
    from vllm.benchmarks import serve as vllm_bench

    parser = load_parser_class()(prog="vllm bench serve")
    vllm_bench.add_cli_args(parser)
    args = parser.parse_args(drop_absent_flags(client_argv(req, concurrency), BENCH, vllm_version()))
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            raw = vllm_bench.main(args)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BenchFailed(f"the benchmark against {req.base_url} failed: {type(exc).__name__}: {exc}",
                          "check that the server answers (`spark-vllm status`) and that --model is its name") from exc
    result = level_result(concurrency, raw)
    if result.completed == 0:
        tail = " ".join(chatter.getvalue().split()[-30:])
        raise BenchFailed(f"no request of {req.prompts(concurrency)} succeeded at concurrency {concurrency} ({tail})",
                          "check --model (the served name) and the server's log")
    return result


def run_bench(req: BenchRequest, progress: Callable[[str], None] = lambda line: None,
              level: Callable[[BenchRequest, int], LevelResult] = run_level) -> list[LevelResult]:
    """Every concurrency level in order; `progress` gets one line before and after each."""
    results = []
    for i, c in enumerate(req.concurrencies, 1):
        progress(f"[{i}/{len(req.concurrencies)}] concurrency {c}: {req.prompts(c)} requests "
                 f"({req.input_len} tokens in, {req.output_len} out)")
        results.append(level(req, c))
        progress(f"[{i}/{len(req.concurrencies)}] {results[-1].describe()}")
    return results


def parse_concurrencies(text: str) -> tuple[int, ...]:
    """Pure: "1,4,16" -> (1, 4, 16)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--concurrency {text!r} is not a list of integers", "e.g. --concurrency 1,4,16") from None
    if not values or min(values) < 1:
        raise UsageError(f"--concurrency {text!r} needs integers of at least 1", "e.g. --concurrency 1,4,16")
    return values

