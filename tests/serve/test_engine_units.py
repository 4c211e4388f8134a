"""The pure serving decisions: parallelism against the cluster's GPUs, the size
check made before Ray starts, and vLLM's parser complaint as one line; the server's
signals told to the caller first."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from orchestrator.errors import BadServeFlags, NotEnoughGpus
from orchestrator.serve.engine import (DRAIN_SECONDS, check_planned_size, explicit_parallel_sizes, fill_unset,
                                       parser_complaint, plan_parallelism)


def test_default_tp_spans_every_gpu_over_ray():
    par = plan_parallelism(None, None, None, gpus=2)
    assert (par.tensor, par.pipeline, par.backend) == (2, 1, "ray")
    assert par.describe() == "TP 2 x PP 1 over 2 GPU(s), executor ray"


def test_default_tp_with_pipeline_stages():
    assert (plan_parallelism(None, 2, None, gpus=4).tensor, plan_parallelism(None, 2, "mp", gpus=4).backend) == (2, "mp")


def test_tp_larger_than_the_joined_cluster():
    with pytest.raises(NotEnoughGpus, match="TP 4 x PP 1 needs 4 GPUs but the cluster has 2"):
        plan_parallelism(4, None, None, gpus=2)


def test_zero_sizes_are_refused():
    with pytest.raises(BadServeFlags):
        plan_parallelism(0, -1, None, gpus=2)


@pytest.mark.parametrize("tp, pp, nodes, per_node", [
    (None, None, 2, 1),  # TP defaults to the cluster: nothing to check yet
    (2, None, 2, 1), (4, None, 4, 1), (2, 2, 4, 1), (4, None, 2, 2),
    (4, None, 2, 0),  # no GPU seen here: the wait for GPU nodes reports it
])
def test_planned_size_that_fits(tp, pp, nodes, per_node):
    check_planned_size(tp, pp, nodes, per_node)


def test_planned_size_names_the_numbers_and_the_fix():
    with pytest.raises(NotEnoughGpus) as exc:
        check_planned_size(4, None, 2, 1)
    assert exc.value.message == ("TP 4 x PP 1 needs 4 GPUs but --nodes 2 Sparks of 1 GPU each have 2 "
                                 "(assuming every Spark has this one's GPUs)")
    assert exc.value.hint == "pass --nodes 4, or a --tensor-parallel-size of at most 2"


def test_planned_size_with_pipeline_and_several_gpus_rounds_nodes_up():
    with pytest.raises(NotEnoughGpus) as exc:
        check_planned_size(3, 2, 2, 2)
    assert "TP 3 x PP 2 needs 6 GPUs but --nodes 2 Sparks of 2 GPUs each have 4" in exc.value.message
    assert exc.value.hint == "pass --nodes 3, or a --tensor-parallel-size of at most 2"


def test_fill_unset_keeps_a_chosen_drain():
    par = plan_parallelism(None, None, None, gpus=2)
    unset = fill_unset(argparse.Namespace(shutdown_timeout=None), par)
    chosen = fill_unset(argparse.Namespace(shutdown_timeout=5), par)
    assert (unset.shutdown_timeout, chosen.shutdown_timeout) == (DRAIN_SECONDS, 5)
    assert (unset.tensor_parallel_size, unset.distributed_executor_backend) == (2, "ray")
    assert not hasattr(fill_unset(argparse.Namespace(), par), "shutdown_timeout")  # old vLLM: left alone


@pytest.mark.parametrize("flags, sizes", [
    (["--tensor-parallel-size", "4"], (4, None)),
    (["-tp=4", "--pipeline_parallel_size", "2"], (4, 2)),
    (["--tensor_parallel_size=3", "--max-model-len", "512"], (3, None)),
    (["--enable-prefix-caching", "--pipeline-parallel-size=2", "-O3"], (None, 2)),
    (["--max-model-len", "512"], (None, None)),
    (["-tp", "four"], (None, None)),  # malformed: left to vLLM's parser and its message
])
def test_explicit_parallel_sizes_in_any_spelling(flags, sizes, capsys):
    assert explicit_parallel_sizes(flags) == sizes
    assert capsys.readouterr().err == ""


# What vLLM's serve_http does with SIGTERM (every release from 0.10.2 to 0.33): a handler on
# its event loop. The script runs `run_server` with that stand-in for vLLM, in a process of
# its own (the signal is real), and prints what was called, in order.
SIGNAL_SCRIPT = """
import asyncio, os, signal, types
from orchestrator.serve import engine

seen = []

async def vllms_run_server(args):
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, lambda: (seen.append("vllm's handler"), stop.set()))
    os.kill(os.getpid(), signal.SIGTERM)
    await stop.wait()

engine.run_server(types.SimpleNamespace(run_server=vllms_run_server), types.SimpleNamespace(), environ={},
                  on_signal=lambda signum: seen.append(int(signum)))
print(seen)
"""


def test_run_server_tells_the_signal_before_vllms_handler_runs():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": repo}, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[15, \"vllm's handler\"]", out.stdout + out.stderr[-2000:]


# What vLLM 0.32's parser writes for a JSON flag pydantic rejects (after its usage block).
PYDANTIC = """usage: spark-vllm serve [-h] [--headless]
                        [--uvicorn-log-level {critical,debug,error,info,trace,warning}]
                        [model_tag]
spark-vllm serve: error: argument --compilation-config/-cc: 2 validation errors for CompilationConfig
mode
  Value error, Invalid compilation mode: x. Valid modes are: NONE, VLLM_COMPILE [type=value_error, input_value='x', input_type=str]
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
bogus
  Unexpected keyword argument [type=unexpected_keyword_argument, input_value=1, input_type=int]
    For further information visit https://errors.pydantic.dev/2.14/v/unexpected_keyword_argument
"""


def test_a_multi_line_pydantic_complaint_keeps_each_field_and_its_message():
    assert parser_complaint(PYDANTIC) == (
        "argument --compilation-config/-cc: 2 validation errors for CompilationConfig: "
        "mode: Value error, Invalid compilation mode: x. Valid modes are: NONE, VLLM_COMPILE; "
        "bogus: Unexpected keyword argument")


@pytest.mark.parametrize("stderr, line", [
    ("usage: spark-vllm serve [-h]\n   [model_tag]\nspark-vllm serve: error: unrecognized arguments: --nope\n",
     "unrecognized arguments: --nope"),
    ("something else went wrong\n", "something else went wrong"),
    ("", ""),
])
def test_a_one_line_complaint_stays_that_line(stderr, line):
    assert parser_complaint(stderr) == line
