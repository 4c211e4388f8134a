"""`ray job submit` against a cluster of `spark-vllm head` and `worker`, for real: the
`ray` CLI and Ray's Jobs API (the head's dashboard), token authentication on, two
simulated Sparks, and `python -m launch serve` as the job's entrypoint serving TP 2
over Ray with vLLM's CPU engine. The job attaches (it starts no node), `ray job logs`
shows our lines, and `ray job stop` drains the requests in flight and ends the server
while the cluster stays up, with the watchdog's probe on and no traceback of ours. Then,
on the same cluster, a job whose engine wedges with `--max-restarts 0` fails with exit
18 and leaves nothing of itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.sim.demo.run import SIM_VLLM_FLAGS
from orchestrator.sim.demo.load import Background
from orchestrator.sim.models.tinymodel import make_tiny_model
from orchestrator.sim.namespaces import netns

from conftest import REPO, ns_http
from namespace_sparks import HEAD_IP, WORKER_IP, healthy_cluster

RAY = str(Path(sys.executable).with_name("ray"))
DASHBOARD = f"http://{HEAD_IP}:8265"
JOB_ID = "spark-vllm-serve"
URL = f"http://{HEAD_IP}:8000"
ENGINE_S = 360  # vLLM's engine build in a job on 2 busy cores; usually 40 to 90 s
STREAM_TOKENS = 160
# What serving runs while it serves: the job's driver (serve) and vLLM's engine process
# on the head, and the Ray workers that hold vLLM's TP ranks on both Sparks (RayWorkerProc
# in vLLM 0.32, RayWorkerWrapper before).
SERVING_PROCESSES = ("launch serve", "EngineCore", "RayWorker")
# vLLM's output handler logging the engine process's exit, once the drain is done.
VLLM_SHUTDOWN_NOTE = re.compile(r"^\(APIServer pid=\d+\) ERROR .*\[async_llm\.py:\d+\] Traceback")


# The `ray` CLI as a user runs it on the head: token auth on, the token in ~/.ray/auth_token
# (the test's HOME).
CLI_ENV = {"RAY_AUTH_MODE": "token"}


def ray_cli(s, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The `ray` CLI in the head's namespace."""
    return s.head_node.run(RAY, *args, env=s.env(CLI_ENV), capture_output=True, text=True, timeout=timeout,
                           cwd=REPO)


def plain(text: str) -> str:
    """The CLI's output without its colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def job_status(s) -> str:
    """What `ray job status` says ("Status for job 'ID': RUNNING", "Job 'ID' was stopped")."""
    r = ray_cli(s, "job", "status", "--address", DASHBOARD, JOB_ID)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return plain(r.stdout + r.stderr)


def serving_processes(s) -> list[str]:
    """What of SERVING_PROCESSES runs in either Spark (vLLM names its processes in their
    command lines: VLLM::EngineCore, ray::RayWorkerProc.run)."""
    return [line for line in s.left() if any(name in line for name in SERVING_PROCESSES)]


def assert_gone_and_the_cluster_stays(job, when: str) -> None:
    """Nothing of a serving job runs any more (within 30 s), and both Sparks stay joined."""
    s = job["sparks"]
    deadline = time.monotonic() + 30
    while (left := serving_processes(s)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left {when}:\n" + "\n".join(left)
    r, out = s.status(s.worker_node)
    assert r.returncode == 0 and out["complete"] is True, r.stderr
    assert [n["ip"] for n in out["nodes"] if n["alive"]] == [HEAD_IP, WORKER_IP]
    assert job["head"].proc.poll() is None and job["worker"].proc.poll() is None


def wait_ready(logs: Path, follower: subprocess.Popen) -> None:
    """Until the job's output (`follower` writes it into `logs`) says serve is ready."""
    deadline = time.monotonic() + ENGINE_S
    while "spark-vllm: ready:" not in logs.read_text():
        assert follower.poll() is None, f"the job ended before it was ready:\n{logs.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no ready within {ENGINE_S} s:\n{logs.read_text()[-4000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def job(netns_ok, tmp_path_factory):
    """The cluster, then the job submitted (--no-wait) and followed (`ray job logs
    --follow` into a file) until serve announces it is ready."""
    model = str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama"))
    with healthy_cluster(tmp_path_factory.mktemp("jobs")) as (s, head, worker):
        # As a user submits it: no --iface, no --sysfs-root (the head's /sys shows no RoCE
        # device): serve takes the network of the head running there, from its run record.
        # The watchdog probes every second while idle (a look each second: --stall-timeout 12),
        # so that a probe is due the moment the drain's last request ends (issue 19: one
        # that landed in vLLM's shutdown made vLLM log a traceback).
        entrypoint = [sys.executable, "-m", "launch", "serve", model, "--simulate", "--port", "8000",
                      "--wait-timeout", "60", "--stall-timeout", "12", "--probe-interval", "1", *SIM_VLLM_FLAGS]
        r = ray_cli(s, "job", "submit", "--address", DASHBOARD, "--submission-id", JOB_ID, "--no-wait", "--",
                    *entrypoint)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        logs = s.tmp / "job.log"
        with open(logs, "w") as out:
            follow = s.head_node.popen(RAY, "job", "logs", "--address", DASHBOARD, "--follow", JOB_ID,
                                       env=s.env(CLI_ENV), stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_ready(logs, follow)
            yield {"sparks": s, "head": head, "worker": worker, "model": model, "logs": logs, "follow": follow}
        finally:
            if follow.poll() is None:  # the job still runs: a test failed before its stop
                ray_cli(s, "job", "stop", "--address", DASHBOARD, JOB_ID, timeout=90)
                follow.kill()
            follow.wait(30)


def test_the_job_attaches_and_serves_tp2_over_both_nodes(job):
    s, text = job["sparks"], job["logs"].read_text()
    assert "attaching to the Ray cluster at" in text and "starting no node" in text
    assert f"network of the head running here: {HEAD_IP} on enp1s0f1np1 (its run record)" in text
    assert "this Spark is the head" not in text and "Ray head started" not in text
    assert "2 of 2 GPU nodes" in text and "TP 2 x PP 1 over 2 GPU(s), executor ray" in text
    assert f"Status for job '{JOB_ID}': RUNNING" in job_status(s)
    got = ns_http(s.worker_node, URL + "/v1/completions", {"model": job["model"], "prompt": "Hello", "max_tokens": 6})
    assert got["status"] == 200 and '"completion_tokens":6' in got["body"].replace(" ", ""), got
    # What the last test must see gone runs now: each kind, and a TP rank on each Spark.
    running = serving_processes(s)
    assert all(any(name in line for line in running) for name in SERVING_PROCESSES), running
    assert {line.split(":")[0] for line in running if "RayWorker" in line} == set(s.net.namespaces), running
    # The job runs beside the nodes it attached to: the head still owns the cluster.
    assert job["head"].proc.poll() is None and job["worker"].proc.poll() is None


def test_a_job_asking_for_more_nodes_than_joined_fails_in_one_line(job):
    """Beside the serving job: a second one wants 3 GPU nodes of a 2-node cluster. It
    fails after its --wait-timeout with one error line and exit 5 (FAILED in Ray's
    words), starts no engine, and the first job serves on."""
    s, failing = job["sparks"], "spark-vllm-too-big"
    entrypoint = [sys.executable, "-m", "launch", "serve", job["model"], "--simulate", "--nodes", "3",
                  "--port", "8001", "--wait-timeout", "5", *SIM_VLLM_FLAGS]
    r = ray_cli(s, "job", "submit", "--address", DASHBOARD, "--submission-id", failing, "--", *entrypoint,
                timeout=240)
    out = plain(r.stdout + r.stderr)
    assert r.returncode != 0 and f"Job '{failing}' failed" in out, out[-3000:]
    # One error line (Ray's CLI prints the job's last lines twice: as they come, then in its status).
    errors = {line for line in out.splitlines() if line.startswith("spark-vllm: error: ")}
    assert len(errors) == 1 and "only 2 of 3 GPU nodes" in errors.pop(), out[-3000:]
    assert f"node {HEAD_IP} joined (1 GPU) - 1 of 3 GPU nodes" in out
    assert "exit code 5" in out and "Traceback" not in out and "EngineCore" not in out, out[-3000:]
    assert f"Status for job '{JOB_ID}': RUNNING" in job_status(s)


def test_ray_job_stop_drains_and_the_cluster_stays(job):
    """`ray job stop` signals the driver and its descendants (vLLM's engine process
    too) at once; the requests in flight still complete, the server ends, the job is
    STOPPED, and both Spark nodes stay joined."""
    s = job["sparks"]
    load = Background(s.worker_node, URL, job["model"], "--requests", "2", "--max-tokens", str(STREAM_TOKENS),
                      env=s.env(None), cwd=str(REPO))
    try:
        load.wait(lambda e: e["event"] == "first", 120, "first token")
        t0 = time.monotonic()
        r = ray_cli(s, "job", "stop", "--address", DASHBOARD, JOB_ID, timeout=120)
        stop_s = time.monotonic() - t0
        ends = [load.wait(lambda e, i=i: e["event"] == "end" and e["i"] == i, 90, "request end") for i in range(2)]
    finally:
        load.close()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [(e["ok"], e["tokens"], e["finish"]) for e in ends] == [(True, STREAM_TOKENS, "length")] * 2, ends
    assert job["follow"].wait(60) is not None and f"Job '{JOB_ID}' was stopped" in job_status(s)
    text = job["logs"].read_text()
    assert "spark-vllm: vLLM's server stopped" in text and "spark-vllm: error" not in text, text[-4000:]
    # Allowed: vLLM's own EngineDeadError, which vLLM 0.32 sometimes logs after "MPClient:
    # complete", once the drain is done and the engine process has exited.
    tracebacks = [line for line in text.splitlines() if "Traceback" in line]
    assert all(VLLM_SHUTDOWN_NOTE.search(line) for line in tracebacks), text[-4000:]
    # Issue 19: a watchdog probe landing in vLLM's shutdown (its tokenizer pool already shut)
    # made uvicorn log this, once a probe.
    assert "cannot schedule new futures" not in text and "Exception in ASGI application" not in text, text[-4000:]
    assert "SIGTERM received" not in text, text[-4000:]  # no stack dump from Ray's crash handler
    assert_gone_and_the_cluster_stays(job, "after the job stopped")
    print(f"ray job stop returned after {stop_s:.1f} s; both streams finished")


WEDGE_JOB = "spark-vllm-wedge"


def engine_cores(s) -> list[psutil.Process]:
    """vLLM's engine-core processes in the head's Spark (titled VLLM::EngineCore)."""
    found = []
    for pid in netns.pids(s.head_node.netns):
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and "EngineCore" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_wedged_engine_with_max_restarts_0_fails_the_job_with_18_and_leaves_nothing(job):
    """Last, after the first job's stop, on the same cluster: a job serving with
    `--max-restarts 0` whose engine core is stopped (SIGSTOP: alive, Ray sees nothing).
    The idle probe goes unanswered; at this first wedge the engine is ended on both Sparks
    and not restarted; the job fails with exit 18 and one error line; nothing of it is
    left, and the cluster stays."""
    s = job["sparks"]
    entrypoint = [sys.executable, "-m", "launch", "serve", job["model"], "--simulate", "--port", "8000",
                  "--wait-timeout", "60", "--stall-timeout", "4", "--probe-interval", "1", "--max-restarts", "0",
                  *SIM_VLLM_FLAGS]
    out_path = s.tmp / "wedge-job.log"
    with open(out_path, "w") as out:  # `ray job submit` follows the job's output until it ends
        submit = s.head_node.popen(RAY, "job", "submit", "--address", DASHBOARD, "--submission-id", WEDGE_JOB,
                                   "--", *entrypoint, env=s.env(CLI_ENV), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready(out_path, submit)
        cores = engine_cores(s)
        assert len(cores) == 1, cores
        t0 = time.monotonic()
        os.kill(cores[0].pid, signal.SIGSTOP)
        code = submit.wait(180)
        ended_s = time.monotonic() - t0
    finally:
        if submit.poll() is None:  # it did not end: stop it, not to hold the cluster
            ray_cli(s, "job", "stop", "--address", DASHBOARD, WEDGE_JOB, timeout=90)
            submit.kill()
            submit.wait(30)
    text = plain(out_path.read_text())
    assert code != 0 and f"Job '{WEDGE_JOB}' failed" in text and "exit code 18" in text, text[-4000:]
    # One error line (Ray's CLI repeats the job's last lines in its failure status).
    errors = {line for line in text.splitlines() if line.startswith("spark-vllm: error: ")}
    assert len(errors) == 1, errors
    error = errors.pop()
    assert "wedged: an idle one-token probe request did not finish" in error, error
    assert "--max-restarts 0 is spent" in error, error
    assert "ready again" not in text and "restart 1" not in text, text[-4000:]
    ended = [line for line in text.splitlines() if line.startswith("spark-vllm: old engine ended: ")]
    assert ended and HEAD_IP in ended[0] and WORKER_IP in ended[0], text[-4000:]
    assert_gone_and_the_cluster_stays(job, "after the wedged job")
    print(f"wedged job with --max-restarts 0: failed with exit 18 {ended_s:.1f} s after the SIGSTOP")
