"""A wedged engine, for real: two simulated Sparks serving TP 2 over Ray, and a process
of the engine stopped with SIGSTOP (alive, its node alive, Ray sees nothing). One
cluster for the module, `--stall-timeout 8 --probe-interval 4 --max-restarts 3`:
1. the worker Spark's TP rank stopped under load (the stall seen in vLLM's counters);
2. the head's engine core stopped while idle (the probe unanswered);
3. the worker's TP rank stopped while idle: three restarts in a row, after each of
   which the process count and the memory in use on both Sparks are back where they
   were before the first;
4. the engine core stopped under load, with the budget spent: the head exits 18 with
   one line, and nothing is left running on either Spark.
Each: detection within the stall timeout + 10 s (the clients' /health turns 503),
requests in flight fail, new ones get a 503 that names the wedge, serving again after
the restart. The times are printed at the end of the run (docs/supervision.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.sim.namespaces import netns
from orchestrator.sim.demo.run import serving_cluster
from orchestrator.sim.demo.load import Background
from orchestrator.sim.models.tinymodel import make_tiny_model
from orchestrator.ops.supervision.supervisor import is_engine_process

from conftest import PREFIX, REPO, TIMINGS, clean_env, ns_http

STALL_S, PROBE_S, MAX_RESTARTS = 8, 4, 3
DETECT_BOUND_S = STALL_S + 10  # the bound
RECOVERY_S = 300
MEMORY_SLACK = 0.10  # the new engine's processes may differ by a few MiB from the old


def background(node, *args: str) -> Background:
    return Background(node, *args, env=clean_env(), cwd=str(REPO))


@pytest.fixture(scope="module")
def served(netns_ok, tmp_path_factory):
    model = str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama"))
    lines: list[tuple[str, str]] = []
    logs = tmp_path_factory.mktemp("logs")
    run_dir = tmp_path_factory.mktemp("run")
    flags = ("--stall-timeout", str(STALL_S), "--probe-interval", str(PROBE_S), "--max-restarts", str(MAX_RESTARTS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARK_VLLM_RUN_DIR", str(run_dir))  # our own run records, read for the states
        with serving_cluster(logs, model, lambda who, line: lines.append((who, line)), prefix=PREFIX,
                             flags=flags) as sim:
            state = {"sim": sim, "lines": lines, "model": model, "restarts": 0,
                     "states": RecordStates(run_dir / f"node-{sim.net.nodes[0].ip}.json")}
            health = background(sim.net.nodes[0], sim.url, "--watch-health")
            state["health"] = health
            try:
                wait_serving(state)
                state["before"], state["shm"] = footprint(sim), shared_memory()
                yield state
            finally:
                health.close()
                state["states"].stop()


class RecordStates:
    """The head's run-record states, in the order seen (what `status` reads)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen, self._stop = path, [], threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            try:
                state = json.loads(self.path.read_text())["state"]
            except (OSError, ValueError, KeyError):
                continue
            if not self.seen or self.seen[-1] != state:
                self.seen.append(state)

    def stop(self) -> None:
        self._stop.set()


def head_lines(state) -> list[str]:
    return [line for who, line in state["lines"] if who == "head"]


def wait_serving(state, timeout: float = 120) -> None:
    """Until one completion comes back whole (the engine and its first probe done)."""
    sim = state["sim"]
    deadline = time.monotonic() + timeout
    while ns_http(sim.net.nodes[0], sim.url + "/v1/completions",
                  {"model": state["model"], "prompt": "x", "max_tokens": 1})["status"] != 200:
        assert time.monotonic() < deadline, sim.head.tail(30)
        time.sleep(1)


def processes(ns: str) -> list[psutil.Process]:
    found = []
    for pid in netns.pids(ns):
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def footprint(sim, settle_s: float = 3.0, timeout: float = 60.0) -> dict[str, tuple[int, float]]:
    """Per Spark: (processes, MiB resident), once the process count held still for
    `settle_s` (Ray ends idle workers a moment after their task)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        counts = {n.ip: len(processes(n.netns)) for n in sim.net.nodes}
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= settle_s or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out = {}
    for n in sim.net.nodes:
        procs, rss = processes(n.netns), 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        out[n.ip] = (len(procs), rss / 2**20)
    return out


def cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # ended meanwhile, or a zombie
        return []


def shared_memory() -> set[str]:
    """vLLM's CPU communicator files in /dev/shm (one machine: both simulated Sparks
    share it), `<port>-tp:0-[0-1]-cpushm_<rank>`: a pair an engine, never unlinked by a
    killed one."""
    return {name for name in os.listdir("/dev/shm") if "cpushm" in name}


def tp_rank(node) -> psutil.Process:
    """vLLM's tensor-parallel worker actor in this Spark (Ray titles it ray::RayWorkerProc)."""
    found = [p for p in processes(node.netns) if "RayWorker" in " ".join(cmdline(p))]
    assert len(found) == 1, [" ".join(cmdline(p))[:120] for p in processes(node.netns)]
    return found[0]


def engine_core(sim) -> psutil.Process:
    found = [p for p in psutil.Process(sim.head.proc.pid).children()
             if (line := cmdline(p)) and is_engine_process(line)]
    assert len(found) == 1, found
    return found[0]


def stop_and_see(state, target: psutil.Process, under_load: bool) -> dict:
    """SIGSTOP `target` (with two requests in flight when `under_load`); until the
    clients' /health turns 503. Returns the times and what the requests saw."""
    sim, model = state["sim"], state["model"]
    head_node = sim.net.nodes[0]
    load = background(head_node, sim.url, model, "--requests", "2", "--max-tokens", "480") if under_load else None
    try:
        if load:
            load.wait(lambda e: e["event"] == "first", 120, "first token")
        t0 = time.time()
        os.kill(target.pid, signal.SIGSTOP)
        health = state["health"].wait(lambda e: e["t"] >= t0 and e["status"] != 200, DETECT_BOUND_S + 30,
                                      "/health not 200")
        ends = [load.wait(lambda e, i=i: e["event"] == "end" and e["i"] == i, 30, "request end")
                for i in range(2)] if load else []
    finally:
        if load:
            load.close()
    return {"t0": t0, "detect_s": health["t"] - t0, "ends": ends,
            "fail_s": max((e["t"] for e in ends), default=t0) - t0}


def check_wedge_and_restart(state, name: str, target: psutil.Process, under_load: bool, cause: str) -> None:
    sim, model = state["sim"], state["model"]
    head_node = sim.net.nodes[0]
    seen = stop_and_see(state, target, under_load)
    assert seen["detect_s"] <= DETECT_BOUND_S, seen
    assert all(not e["ok"] and e["error"] for e in seen["ends"]), seen["ends"]  # cut short, not hanging
    # New requests: vLLM's own error for a moment, then our 503 naming the wedge.
    deadline, ask = time.monotonic() + 60, {"model": model, "prompt": "x", "max_tokens": 1}
    while (r := ns_http(head_node, sim.url + "/v1/completions", ask))["status"] != 503 and \
            time.monotonic() < deadline:
        assert r["status"] != 200, r
        time.sleep(0.5)
    assert r["status"] == 503 and "wedged" in r["body"] and r["headers"].get("Retry-After"), r
    state["restarts"] += 1
    deadline = time.monotonic() + RECOVERY_S
    while sum("ready again" in line for line in head_lines(state)) < state["restarts"]:
        assert sim.head.proc.poll() is None, sim.head.tail(40)
        assert time.monotonic() < deadline, sim.head.tail(40)
        time.sleep(0.5)
    recovered_s = time.time() - seen["t0"]
    wait_serving(state)
    assert not psutil.pid_exists(target.pid) or target.status() == psutil.STATUS_ZOMBIE  # the stopped one is gone
    lines = head_lines(state)
    assert any(f"vLLM's engine is wedged: {cause}" in line for line in lines), lines[-15:]
    ended = [line for line in lines if line.startswith("old engine ended: tensor-parallel workers: ")]
    assert ended and all(ip in ended[-1] for ip in ips(sim)), lines[-15:]
    assert "/dev/shm file(s) removed" in ended[-1], ended[-1]  # vLLM's CPU communicator's, on both
    after = footprint(sim)
    shm = shared_memory()
    TIMINGS.append(f"wedge, {name}: /health not 200 after {seen['detect_s']:.1f} s"
                   + (f"; requests in flight failed after {seen['fail_s']:.1f} s" if seen["ends"] else "")
                   + f"; serving again after {recovered_s:.1f} s; footprint {fmt(after)} (before {fmt(state['before'])})")
    for ip, (count, mib) in after.items():
        was_count, was_mib = state["before"][ip]
        # At most as many: the first count may include an idle Ray worker that Ray ends later.
        assert count <= was_count, f"{ip}: {count} processes, {was_count} before the first wedge"
        assert mib <= was_mib * (1 + MEMORY_SLACK), f"{ip}: {mib:.0f} MiB resident, {was_mib:.0f} before"
    # The new engine's pair replaced the old one's (other runs' leftovers may be there too).
    assert len(shm) <= len(state["shm"]), f"/dev/shm gained {sorted(shm - state['shm'])}"


def ips(sim) -> list[str]:
    return [n.ip for n in sim.net.nodes]


def fmt(fp: dict) -> str:
    return ", ".join(f"{ip}: {n} processes {mib:.0f} MiB" for ip, (n, mib) in fp.items())


def test_stopped_worker_rank_under_load(served):
    check_wedge_and_restart(served, "worker's TP rank stopped, under load", tp_rank(served["sim"].net.nodes[1]),
                            under_load=True, cause="2 request(s) running and no token")


def test_stopped_engine_core_idle(served):
    check_wedge_and_restart(served, "engine core stopped, idle", engine_core(served["sim"]), under_load=False,
                            cause="an idle one-token probe request did not finish")


def test_stopped_worker_rank_idle_three_restarts_leave_nothing_behind(served):
    check_wedge_and_restart(served, "worker's TP rank stopped, idle", tp_rank(served["sim"].net.nodes[1]),
                            under_load=False, cause="an idle one-token probe request did not finish")
    assert served["restarts"] == 3
    states = served["states"].seen
    assert states.count("wedged") == 3 and states.count("restarting") == 3, states
    metrics = ns_http(served["sim"].net.nodes[0], served["sim"].url + "/metrics")["body"]
    assert 'spark_vllm_engine_restarts_total{cause="wedged"} 3.0' in metrics
    assert 'spark_vllm_engine_wedges_total{cause="stall"} 1.0' in metrics
    assert 'spark_vllm_engine_wedges_total{cause="probe"} 2.0' in metrics
    probes = next(float(line.split()[1]) for line in metrics.splitlines()
                  if line.startswith("spark_vllm_watchdog_probes_total "))  # the sample, not its HELP line
    assert probes >= 1
    # The probes stay out of the log (uvicorn's access log drops them).
    text = "".join(Path(served["sim"].head.log_path).read_text())
    assert "spark-vllm=probe" not in text


def test_budget_spent_exits_18_and_leaves_nothing(served):
    """Last (it ends the cluster): the engine core stopped under load with the three
    restarts spent: exit 18, one error line, nothing left on either Spark."""
    sim = served["sim"]
    seen = stop_and_see(served, engine_core(sim), under_load=True)
    assert seen["detect_s"] <= DETECT_BOUND_S, seen
    assert all(not e["ok"] and e["error"] for e in seen["ends"]), seen["ends"]
    code = sim.head.proc.wait(120)
    exited_s = time.time() - seen["t0"]
    assert code == 18, sim.head.tail(30)
    deadline = time.monotonic() + 10  # the last lines may still be in the pipe
    while not any(line.startswith("error:") for line in head_lines(served)) and time.monotonic() < deadline:
        time.sleep(0.2)
    errors = [line for line in head_lines(served) if line.startswith("error:")]
    assert len(errors) == 1 and "wedged" in errors[0] and "--max-restarts 3 is spent" in errors[0], errors
    assert sim.workers[0].proc.wait(90) == 7, sim.workers[0].tail(20)  # it left when the head went
    served["health"].close()  # the test's own watcher, in the head's namespace
    left = netns.wait_empty(sim.net.namespaces, 30)
    assert not any(left.values()), left
    TIMINGS.append(f"wedge with the budget spent: /health not 200 after {seen['detect_s']:.1f} s; "
                   f"head exited 18 after {exited_s:.1f} s; nothing left on either Spark")
