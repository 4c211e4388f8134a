"""The serving benchmark's pure parts: the client's flags, the figures kept, the levels;
and where vLLM's log lines go when `bench` runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import BenchFailed, UsageError
from orchestrator.ops.observation.bench import BenchRequest, LevelResult, client_argv, level_result, parse_concurrencies, run_bench

REPO = Path(__file__).resolve().parents[2]
RAW = {"completed": 16, "failed": 0, "duration": 2.0, "output_throughput": 256.0, "request_throughput": 8.0,
       "p50_ttft_ms": 10.0, "p99_ttft_ms": 30.0, "p50_tpot_ms": 5.0, "p99_tpot_ms": 9.0,
       "p50_itl_ms": 4.0, "p99_itl_ms": 12.0, "median_ttft_ms": 10.0}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_client_flags_name_server_model_tokenizer_and_level():
    req = BenchRequest("http://192.168.100.10:8000/", "m", tokenizer="/models/m", input_len=100, output_len=20)
    argv = client_argv(req, 4)
    assert flag(argv, "--base-url") == "http://192.168.100.10:8000"
    assert flag(argv, "--model") == "m" and flag(argv, "--tokenizer") == "/models/m"
    assert flag(argv, "--max-concurrency") == "4" and flag(argv, "--num-prompts") == "32"
    assert flag(argv, "--random-input-len") == "100" and flag(argv, "--random-output-len") == "20"
    assert flag(argv, "--metric-percentiles") == "50,99" and "--ignore-eos" in argv
    assert flag(argv, "--num-warmups") == "4"


def test_tokenizer_defaults_to_the_model_and_prompts_to_at_least_sixteen():
    req = BenchRequest("http://h:8000", "/models/m", prompts_per_level=None)
    assert flag(client_argv(req, 1), "--tokenizer") == "/models/m"
    assert flag(client_argv(req, 1), "--num-prompts") == "16"
    assert flag(client_argv(BenchRequest("http://h:8000", "m", prompts_per_level=3), 16), "--num-prompts") == "3"


def test_a_level_below_one_is_refused():
    with pytest.raises(UsageError):
        client_argv(BenchRequest("http://h:8000", "m"), 0)


def test_level_result_keeps_p50_and_p99():
    r = level_result(8, RAW)
    assert (r.concurrency, r.completed, r.output_tok_s) == (8, 16, 256.0)
    assert (r.ttft_p50_ms, r.ttft_p99_ms, r.tpot_p50_ms, r.itl_p99_ms) == (10.0, 30.0, 5.0, 12.0)
    assert r.to_json()["itl_p50_ms"] == 4.0
    assert "concurrency 8: 256.0 output tok/s" in r.describe()


def test_level_result_names_a_missing_metric():
    raw = {k: v for k, v in RAW.items() if k != "p99_itl_ms"}
    with pytest.raises(BenchFailed, match="p99_itl_ms"):
        level_result(1, raw)


@pytest.mark.parametrize("text, want", [("1,4,16", (1, 4, 16)), ("8", (8,)), ("2, 3,", (2, 3))])
def test_concurrency_lists(text, want):
    assert parse_concurrencies(text) == want


@pytest.mark.parametrize("text", ["", "a,b", "0,4", "-1"])
def test_bad_concurrency_lists(text):
    with pytest.raises(UsageError):
        parse_concurrencies(text)


def test_run_bench_walks_the_levels_in_order_with_progress():
    lines: list[str] = []
    seen: list[int] = []

    def level(req, c) -> LevelResult:  # stands in for the server: a plain function of the level
        seen.append(c)
        return level_result(c, {**RAW, "output_throughput": 100.0 * c})

    results = run_bench(BenchRequest("http://h:8000", "m", concurrencies=(1, 4)), lines.append, level)
    assert seen == [1, 4] and [r.output_tok_s for r in results] == [100.0, 400.0]
    assert len(lines) == 4 and lines[0].startswith("[1/2] concurrency 1") and "400.0 output tok/s" in lines[3]


def test_cli_url_without_model_is_a_usage_error():
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "-m", "launch", "bench", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "--url needs --model" in out.stderr
    assert out.stderr.count("spark-vllm: error:") == 1


def test_bench_sends_vllms_log_lines_to_stderr_and_keeps_stdout_for_its_output():
    # vLLM's CUDA build logs its platform on import, to stdout by default: seen on the GPU
    # machine, where `spark-vllm bench --json` printed it before the JSON. The real vLLM
    # logger, configured from the environment `bench` sets before importing vLLM, as vLLM
    # does on import (0.24) or on its first configuration (0.32: called here).
    script = ("import os; from launch.benchcmd import QUIET_STDOUT; os.environ.update(QUIET_STDOUT); "
              "import vllm.logger as log; log._configure_vllm_root_logger(); "
              "log.init_logger('vllm.bench_test').warning('chatter from vLLM')")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_STREAM"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "chatter from vLLM" in out.stderr and "chatter from vLLM" not in out.stdout, (out.stdout, out.stderr[-500:])
