"""spark-vllm against the playbook's shell flow, side by side on simulated Sparks.

`make bench` runs this. Each scenario is run in pairs (ours, theirs), the order
alternating from pair to pair; a ratio is ours over theirs per pair, reported as
the median of the pairs with its spread (min, max):

- discovery: in-process discovery + plan vs `ip -4 addr show | grep` plus the
  ibdev2netdev sysfs walk (benchmarks.discovery, one round a pair);
- cluster_formation: from the worker's start until the head sees both GPU nodes.
  Ours: `spark-vllm head` / `spark-vllm worker`, seen by the head's "node X joined"
  line. Theirs: `ray start --head` / `ray start --address` (Ray's CLI), seen when the
  GCS registered the worker (Ray's own record, their best case). The same runs give
  join_detection: our line's time minus the GCS registration time;
- cold_start: from the first command until the first token of a streamed
  completion. Ours: `spark-vllm serve MODEL` and `spark-vllm serve --head-ip` started
  together. Theirs: `ray start --head`, then `ray start --address`, then `vllm serve`
  (vLLM's CLI entry point) with the same model and flags. Each phase is timed;
- serving_throughput: vLLM's benchmark client (`spark-vllm bench`) against each
  cold-started server at concurrency 1, 4 and 16: one untimed run at 16, then each
  level's median of three runs, with the CPU seconds of every process of both Sparks
  during each run (benchmarks.cpu_profile). Ratios at every concurrency.
- warm_restart and recovery (benchmarks.restarts): a second start on warm compile
  caches against the first, and the in-process recovery against a cold start.

Writes benchmarks/results/latest.json and the PNG plots next to it. Needs root.

    .venv/bin/python -m benchmarks.side_by_side [--pairs 3] [--cluster-pairs 5] [--only cold_start ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.sim.namespaces import caches, gpusim, netns
from orchestrator.sim.demo.run import SIM_VLLM_FLAGS
from orchestrator.sim.models.tinymodel import make_tiny_model

from . import cpu_profile, restarts, shell_flow

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHES = RESULTS / "cache"  # each simulated Spark's compile caches (node0, node1), warm between runs
PY = sys.executable
PORT = 8000
RAY_PORT = 6379
CONCURRENCIES = "1,4,16"
OUTPUT_LEN = 64  # output tokens a request in the serving runs
SERVING_REPEATS = 3  # timed client runs a level on each server; its median run is kept
# Variables the user's shell must not leak into either flow.
DROP = ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES",
        "OMPI_MCA_btl_tcp_if_include", "MASTER_ADDR", "RAY_memory_monitor_refresh_ms", "RAY_worker_niceness", "NCCL_IB_HCA",
        "RAY_ADDRESS")


def say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP and not k.startswith("SPARK_VLLM_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **extra)
    return env


class Proc:
    """A command in a simulated Spark, each output line kept with its wall-clock time."""

    def __init__(self, node: netns.SimNode, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.t_start = time.time()
        self.proc = node.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               env=env, cwd=REPO)
        self.lines: list[tuple[float, str]] = []
        self.log = log
        self.done = False  # the output ended (the process exited)
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        with open(self.log, "a") as out:
            for line in self.proc.stdout:
                out.write(line)
                with self._cond:
                    self.lines.append((time.time(), line.rstrip()))
                    self._cond.notify_all()
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def when(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        return next((t for t, line in self.lines if rx.search(line)), None)

    def wait_line(self, pattern: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                t = self.when(pattern)
                if t is not None:
                    return t
                if self.done:
                    raise RuntimeError(f"exited {self.proc.wait()} before /{pattern}/; see {self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no /{pattern}/ after {timeout:g} s; see {self.log}")
                self._cond.wait(0.5)

    def wait_exit(self, timeout: float) -> float:
        code = self.proc.wait(timeout)
        if code:
            raise RuntimeError(f"exited {code}; see {self.log}")
        return time.time()


def clear(net: netns.SimNetwork) -> None:
    """End every process in the simulated Sparks (Ray's daemons included): the next run
    starts cold. The page cache stays warm for both flows alike."""
    for ns in net.namespaces:
        netns.end_processes(ns, grace_s=10.0, kill_wait_s=3.0)


def playbook_env(node: netns.SimNode, head_ip: str, sim: dict[str, str]) -> dict[str, str]:
    """What the playbook user exports by hand on this node (spark-vllm's own plan, so both
    flows run with the same variables), plus the simulation's own (`sim`)."""
    r = node.run(PY, "-m", "launch", "env", "--json", "--sysfs-root", node.sysfs_root, "--head-ip", head_ip,
                 capture_output=True, text=True, env=base_env(), cwd=REPO, check=True)
    plan = json.loads(r.stdout)
    # The playbook runs Ray without token auth. Said explicitly: Ray 2.60's `ray start --head`
    # turns it on by itself when ~/.ray/auth_token exists (spark-vllm's default token file),
    # and `ray start --address` does not, so the shell flow's worker would be refused.
    return base_env(**{v["name"]: v["value"] for v in plan["variables"]}, **sim, RAY_AUTH_MODE="disabled")


def node_times(node: netns.SimNode, head_ip: str, env: dict[str, str]) -> dict[str, float]:
    """When the GCS registered each node; `env` the flow's own (its Ray auth mode)."""
    r = node.run(PY, "-m", "benchmarks.probes", "node-times", f"{head_ip}:{RAY_PORT}", capture_output=True,
                 text=True, env=env, cwd=REPO, timeout=120)
    if r.returncode:
        raise RuntimeError(f"node-times probe failed: {r.stderr[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


class Bench:
    """`gpus`: the GPU simulation's layout (real GPUs, vLLM's CUDA engine, `flags` its
    vLLM flags); None: the CPU simulation."""

    def __init__(self, net: netns.SimNetwork, workdir: Path, model: str, gpus: gpusim.GpuLayout | None = None,
                 repeats: int = SERVING_REPEATS, output_len: int = OUTPUT_LEN, per_level: int | None = None,
                 levels: str = CONCURRENCIES) -> None:
        self.net, self.workdir, self.model, self.gpus, self.repeats = net, workdir, model, gpus, repeats
        # Each level's load: output tokens a request, and requests = per_level x concurrency
        # (None: spark-vllm bench's default).
        self.output_len, self.per_level, self.levels = output_len, per_level, levels.split(",")
        self.head, self.worker = net.nodes
        self.flags = gpusim.GPU_VLLM_FLAGS if gpus else SIM_VLLM_FLAGS
        self.env = {n.ip: playbook_env(n, self.head.ip, self.sim_env(n)) for n in net.nodes}
        self.runs = 0

    def sim_env(self, node: netns.SimNode) -> dict[str, str]:
        """What the simulation sets on `node` for both flows: its GPU, or the CPU switch."""
        return self.gpus.env(node.index) if self.gpus else {"SPARK_VLLM_SIMULATE": "1"}

    def our_env(self, node: netns.SimNode) -> dict[str, str]:
        return base_env(**self.gpus.env(node.index)) if self.gpus else base_env()

    def proc(self, node, argv, env, name) -> Proc:
        self.runs += 1
        # Both flows: each simulated Spark compiles into its own caches, kept between runs.
        return Proc(node, argv, caches.node_env(env, CACHES, node.index), self.workdir / f"{self.runs:02d}-{name}.log")

    def ours(self, node, *args: str) -> list[str]:
        return [PY, "-m", "launch", *args, *(() if self.gpus else ("--simulate",)), "--sysfs-root", node.sysfs_root]

    # --- cluster formation + join detection ---------------------------------------
    def formation_ours(self) -> dict:
        head = self.proc(self.head, self.ours(self.head, "head"), self.our_env(self.head), "ours-head")
        try:
            t_head = head.wait_line(r"waiting for \d+ GPU node", 120)
            t0 = time.time()
            self.proc(self.worker, self.ours(self.worker, "worker", "--head-ip", self.head.ip),
                      self.our_env(self.worker), "ours-worker")
            seen = head.wait_line(rf"node {re.escape(self.worker.ip)} joined", 120)
            # Our nodes use token auth (spark-vllm's default), the token in ~/.ray/auth_token.
            registered = node_times(self.head, self.head.ip, base_env(RAY_AUTH_MODE="token"))[self.worker.ip]
        finally:
            clear(self.net)
        return {"head_s": t_head - head.t_start, "formation_s": seen - t0, "registered_s": registered - t0,
                "join_detection_s": seen - registered}

    def formation_theirs(self) -> dict:
        try:
            head = self.proc(self.head, shell_flow.ray_start_head(PY, self.head.ip, RAY_PORT),
                             self.env[self.head.ip], "theirs-head")
            t_head = head.wait_exit(120)
            t0 = time.time()
            worker = self.proc(self.worker, shell_flow.ray_start_worker(PY, self.worker.ip,
                                                                        f"{self.head.ip}:{RAY_PORT}"),
                               self.env[self.worker.ip], "theirs-worker")
            t_exit = worker.wait_exit(120)
            registered = node_times(self.head, self.head.ip, self.env[self.head.ip])[self.worker.ip]
        finally:
            clear(self.net)
        return {"head_s": t_head - head.t_start, "formation_s": registered - t0, "cli_exit_s": t_exit - t0}

    # --- cold start to the first token, then serving ---------------------------------
    def first_token_probe(self) -> subprocess.Popen:
        return self.worker.popen(PY, "-m", "benchmarks.probes", "first-token", f"http://{self.head.ip}:{PORT}",
                                 self.model, "600", stdout=subprocess.PIPE, text=True, env=base_env(), cwd=REPO)

    def probe_result(self, probe: subprocess.Popen, servers: list[Proc]) -> dict:
        while probe.poll() is None:
            if any(s.proc.poll() is not None for s in servers):
                probe.kill()
                raise RuntimeError(f"a server exited before its first token; see {servers[0].log}")
            time.sleep(0.5)
        out = probe.stdout.read().strip()
        if probe.returncode or not out:
            raise RuntimeError(f"first-token probe failed ({probe.returncode}); see {servers[0].log}")
        return json.loads(out)

    def serving(self) -> list[dict]:
        """Each level's median run of `self.repeats`, after one untimed run at the highest
        level. On the 2-core simulation a run's speed is bimodal in both flows alike (see
        docs/performance.md: a run is either fast or about 30 % slower, at random, the
        first one after a start most often slow), so a level's figure is the median of
        several runs, the same for both flows; every run is kept in `runs`."""
        self.bench_once(levels=self.levels[-1:])  # warm-up, not counted
        runs = [self.bench_once() for _ in range(self.repeats)]
        return [median_level(list(levels)) for levels in zip(*runs)]

    def load_flags(self, concurrency: int) -> tuple[str, ...]:
        flags = ("--output-len", str(self.output_len))
        return flags + (("--num-prompts", str(self.per_level * concurrency)) if self.per_level else ())

    def bench_once(self, levels: list[str] | None = None) -> list[dict]:
        """One client run per level, each with the CPU seconds every process of both
        Sparks spent meanwhile (`cpu_s`: {node: {role: s}}), the client's included."""
        namespaces = {n.ip: n.netns for n in self.net.nodes}
        out = []
        for c in levels or self.levels:
            before, client_before = cpu_profile.snapshot(namespaces), cpu_profile.children_cpu_s()
            r = self.worker.run(PY, "-m", "launch", "bench", "--url", f"http://{self.head.ip}:{PORT}", "--model",
                                self.model, "--concurrency", c, *self.load_flags(int(c)), "--json",
                                capture_output=True, text=True, env=base_env(), cwd=REPO, timeout=600)
            after = cpu_profile.snapshot(namespaces)
            if r.returncode:
                raise RuntimeError(f"spark-vllm bench failed: {r.stderr[-800:]}")
            level = json.loads(r.stdout)["levels"][0]
            level["cpu_s"] = cpu_profile.with_process(cpu_profile.spent(before, after), self.worker.ip,
                                                      "bench-client", cpu_profile.children_cpu_s() - client_before)
            out.append(level)
        return out

    def outcome(self, t0: float, got: dict, marks: dict[str, float | None], serve: bool) -> dict:
        """A cold start's figures (seconds from t0), then the serving sweep on the server it started."""
        result = {"total_s": got["first_token"] - t0, "marks_s": rel(marks, t0)}
        if serve:
            result["serving"] = self.serving()
        return result

    def cold_ours(self, serve: bool) -> dict:
        try:
            t0 = time.time()
            probe = self.first_token_probe()
            head = self.proc(self.head, self.ours(self.head, "serve", self.model, "--port", str(PORT),
                                                  *self.flags), self.our_env(self.head), "ours-serve-head")
            self.proc(self.worker, self.ours(self.worker, "serve", "--head-ip", self.head.ip),
                      self.our_env(self.worker), "ours-serve-worker")
            got = self.probe_result(probe, [head])
            marks = {"vllm_flags_checked": head.when(r"accepted the flags"), "ray_started": head.when(r"Ray head started"),
                     "cluster_complete": head.when(r"cluster complete"), "healthy": got["health"],
                     "first_token": got["first_token"]}
            return self.outcome(t0, got, marks, serve)
        finally:
            clear(self.net)

    def cold_theirs(self, serve: bool) -> dict:
        try:
            t0 = time.time()
            head = self.proc(self.head, shell_flow.ray_start_head(PY, self.head.ip, RAY_PORT),
                             self.env[self.head.ip], "theirs-ray-head")
            t_head = head.wait_exit(120)
            worker = self.proc(self.worker, shell_flow.ray_start_worker(PY, self.worker.ip,
                                                                        f"{self.head.ip}:{RAY_PORT}"),
                               self.env[self.worker.ip], "theirs-ray-worker")
            t_worker = worker.wait_exit(120)
            probe = self.first_token_probe()
            server = self.proc(self.head, shell_flow.vllm_serve(PY, self.model, "--port", str(PORT), *self.flags,
                                                                "--tensor-parallel-size", "2",
                                                                "--distributed-executor-backend", "ray"),
                               self.env[self.head.ip], "theirs-vllm-serve")
            got = self.probe_result(probe, [server])
            # vLLM logs its non-default args once imported and parsed, before building the engine.
            marks = {"ray_head_started": t_head, "ray_worker_joined": t_worker,
                     "vllm_flags_checked": server.when(r"non-default args"), "healthy": got["health"],
                     "first_token": got["first_token"]}
            return self.outcome(t0, got, marks, serve)
        finally:
            clear(self.net)


def median_level(runs: list[dict]) -> dict:
    """Pure: of one level's runs, the run with the median output tokens/s (an odd count
    gives a real run, its TTFT and CPU seconds with it), and every run's tokens/s."""
    ranked = sorted(runs, key=lambda lv: lv["output_tok_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["runs_output_tok_s"] = [round(lv["output_tok_s"], 1) for lv in runs]
    return chosen


def rel(marks: dict[str, float | None], t0: float) -> dict[str, float | None]:
    return {k: None if v is None else round(v - t0, 2) for k, v in marks.items()}


def paired(n: int, ours, theirs, label: str) -> list[dict]:
    """n pairs, ours first in even pairs and theirs first in odd ones."""
    pairs = []
    for i in range(n):
        order = [("ours", ours), ("theirs", theirs)]
        if i % 2:
            order.reverse()
        pair = {}
        for who, fn in order:
            t = time.monotonic()
            pair[who] = fn()
            say(f"{label} pair {i + 1}/{n}: {who} done in {time.monotonic() - t:.1f} s")
        pairs.append(pair)
    return pairs


def spread(values: list[float], digits: int = 3) -> dict:
    """Median and spread (min, max) of the paired values."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values), "values": [round(v, digits) for v in values]}


def ratio(pairs: list[dict], key) -> dict:
    return spread([key(p["ours"]) / key(p["theirs"]) for p in pairs])


def discovery_pairs(net: netns.SimNetwork, rounds: int) -> dict:
    """benchmarks.discovery once in the head's namespace with `rounds` alternating rounds."""
    r = net.nodes[0].run(PY, "-m", "benchmarks.discovery", "--inside", net.nodes[0].sysfs_root, "--runs", "50",
                         "--cli-runs", "3", "--rounds", str(rounds), capture_output=True, text=True,
                         env=base_env(), cwd=REPO, timeout=600)
    if r.returncode:
        raise RuntimeError(f"discovery failed: {r.stderr[-800:]}")
    found = json.loads(r.stdout)
    pairs = found["rounds"]
    return {"pairs": pairs, "ratio": ratio(pairs, lambda side: side["median_ms"]),
            "ours_median_ms": spread([p["ours"]["median_ms"] for p in pairs]),
            "theirs_median_ms": spread([p["theirs"]["median_ms"] for p in pairs]),
            "cli_process": found["cli_process"]}


def serving_curve(pairs: list[dict], who: str) -> list[dict]:
    """Per concurrency: the median over the pairs of throughput and TTFT p50."""
    levels = {}
    for p in pairs:
        for lv in p[who].get("serving", []):
            levels.setdefault(lv["concurrency"], []).append(lv)
    return [{"concurrency": c, "output_tok_s": round(statistics.median(x["output_tok_s"] for x in lv), 1),
             "ttft_p50_ms": round(statistics.median(x["ttft_p50_ms"] for x in lv), 1),
             "tpot_p50_ms": round(statistics.median(x["tpot_p50_ms"] for x in lv), 1),
             "itl_p99_ms": round(statistics.median(x["itl_p99_ms"] for x in lv), 1)}
            for c, lv in sorted(levels.items())]


def at_level(side: dict, concurrency: int, key: str):
    return next(lv[key] for lv in side["serving"] if lv["concurrency"] == concurrency)


def serving_scenario(pairs: list[dict]) -> dict:
    """Pure: the serving ratios (ours over theirs, pair by pair) at every concurrency, the
    highest one as the headline, and each flow's median CPU seconds by node and process
    role during the highest-concurrency run (where a slowdown comes from)."""
    levels = sorted({lv["concurrency"] for p in pairs for who in ("ours", "theirs") for lv in p[who]["serving"]})
    top = max(levels)
    by_level = {str(c): {"output_tok_s": ratio(pairs, lambda s, c=c: at_level(s, c, "output_tok_s")),
                         "ttft_p50": ratio(pairs, lambda s, c=c: at_level(s, c, "ttft_p50_ms"))}
                for c in levels}
    return {"concurrency": top, "ratio": by_level[str(top)]["output_tok_s"],
            "ttft_p50_ratio": by_level[str(top)]["ttft_p50"], "by_concurrency": by_level,
            "cpu_s_at_top": {who: median_cpu([at_level(p[who], top, "cpu_s") for p in pairs])
                             for who in ("ours", "theirs")},
            "curve": {"ours": serving_curve(pairs, "ours"), "theirs": serving_curve(pairs, "theirs")}}


def median_cpu(samples: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Pure: per node and role, the median of the runs' CPU seconds (0 where a run lacked it)."""
    keys = {(node, r) for s in samples for node, roles in s.items() for r in roles}
    out: dict[str, dict[str, float]] = {}
    for node, r in sorted(keys):
        out.setdefault(node, {})[r] = round(statistics.median(s.get(node, {}).get(r, 0.0) for s in samples), 2)
    return out


def add_setup_args(p: argparse.ArgumentParser) -> None:
    """The options this harness shares with benchmarks.executors: where it runs, on what
    model, and the serving load (smaller on a shared GPU, where a token takes 0.28 s)."""
    p.add_argument("--gpu", action="store_true",
                   help="the GPU simulation: real GPUs (shared when fewer than two), vLLM's CUDA engine")
    p.add_argument("--model", default=None, help="model folder (default: the tiny random Llama, made once)")
    p.add_argument("--serving-repeats", type=int, default=SERVING_REPEATS,
                   help=f"timed runs of each concurrency, the median kept (default {SERVING_REPEATS})")
    p.add_argument("--output-len", type=int, default=OUTPUT_LEN,
                   help=f"output tokens a request in the serving runs (default {OUTPUT_LEN})")
    p.add_argument("--levels", default=CONCURRENCIES, help=f"serving concurrencies (default {CONCURRENCIES})")
    p.add_argument("--prompts-per-level", type=int, default=None,
                   help="requests a level, times its concurrency (default: spark-vllm bench's, 8 x, at least 16)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.side_by_side", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3,
                   help="cold-start (and serving) pairs (default 3; 0: only the warm-up start, "
                        "to fill the compile caches for a later run)")
    p.add_argument("--cluster-pairs", type=int, default=5, help="cluster-formation pairs (default 5)")
    p.add_argument("--discovery-rounds", type=int, default=7, help="discovery pairs (default 7)")
    p.add_argument("--only", nargs="*", choices=("discovery", "cluster_formation", "cold_start", "restarts"),
                   help="run only these scenarios")
    p.add_argument("--no-serving", action="store_true", help="skip the throughput runs after each cold start")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed cold start that fills the compile caches first (fair only on caches "
                        "already warm: on empty ones the first flow of a pair pays for filling them)")
    add_setup_args(p)
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = p.parse_args(argv)
    reason = netns.available()
    if reason:
        say(reason)
        return 1
    only = set(args.only or ("discovery", "cluster_formation", "cold_start", "restarts"))
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "kernel": platform.release()},
                    "note": ("GPU simulation: two network-namespace Sparks on this machine's GPUs, NCCL over a veth; "
                             "the ratios compare the two flows on equal terms" if args.gpu else
                             "CPU simulation: two network-namespace Sparks sharing one machine's cores; "
                             "absolute figures mean little, the ratios compare the two flows on equal terms"),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t_all = time.monotonic()
    netns.cleanup_stale("svbench")
    # Every process's log, where an error can name it: this run's only.
    workdir = RESULTS / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.log"):
        old.unlink()
    with netns.SimNetwork(nodes=2, prefix="svbench") as net:
        # A fixed place, so vLLM's compile cache (keyed by the model) stays warm between runs.
        model_dir = RESULTS / "model" / "tiny-llama"
        model = args.model or str(model_dir if (model_dir / "config.json").exists() else make_tiny_model(model_dir))
        gpus = gpusim.layout_here(net) if args.gpu else None
        if gpus:
            say(gpus.describe())
            report["gpus"] = {"mode": gpus.mode, "line": gpus.describe()}
        bench = Bench(net, workdir, model, gpus, args.serving_repeats, args.output_len, args.prompts_per_level,
                      args.levels)
        scen: dict = {}
        try:
            if "cold_start" in only and args.warmup:
                # Untimed: compiles the model into vLLM's and inductor's caches, which then
                # serve both flows alike (as they would after a Spark's first start).
                t = time.monotonic()
                bench.cold_theirs(serve=False)
                say(f"warm-up cold start done in {time.monotonic() - t:.1f} s")
            if "discovery" in only:
                scen["discovery"] = discovery_pairs(net, args.discovery_rounds)
                say(f"discovery ratio {scen['discovery']['ratio']['median']}")
            if "cluster_formation" in only:
                pairs = paired(args.cluster_pairs, bench.formation_ours, bench.formation_theirs, "cluster formation")
                scen["cluster_formation"] = {
                    "pairs": pairs, "ratio": ratio(pairs, lambda s: s["formation_s"]),
                    # Secondary views: against `ray start --address` returning (what a shell
                    # script waits for), and registration against registration (no detection).
                    "ratio_vs_ray_start_exit": spread([p["ours"]["formation_s"] / p["theirs"]["cli_exit_s"]
                                                       for p in pairs]),
                    "ratio_registration_only": spread([p["ours"]["registered_s"] / p["theirs"]["formation_s"]
                                                       for p in pairs])}
                scen["join_detection"] = {"seconds": spread([p["ours"]["join_detection_s"] for p in pairs]),
                                          "what": "our head's 'node X joined' line minus the GCS registration time"}
            if "cold_start" in only and args.pairs:
                pairs = paired(args.pairs, lambda: bench.cold_ours(not args.no_serving),
                               lambda: bench.cold_theirs(not args.no_serving), "cold start")
                scen["cold_start"] = {"pairs": pairs, "ratio": ratio(pairs, lambda s: s["total_s"]),
                                      "ours_s": spread([p["ours"]["total_s"] for p in pairs], 1),
                                      "theirs_s": spread([p["theirs"]["total_s"] for p in pairs], 1)}
                if not args.no_serving:
                    scen["serving_throughput"] = serving_scenario(pairs)
        finally:
            clear(net)
    if "restarts" in only:  # its own simulated Sparks, each node's caches emptied first
        scen.update(restarts.measure(say=say))
    report["scenarios"] = scen
    report["ratios"] = {k: scen[k]["ratio"] for k in ("discovery", "cluster_formation", "cold_start",
                                                        "serving_throughput", "warm_restart", "recovery")
                        if k in scen}
    report["join_detection_s"] = scen.get("join_detection", {}).get("seconds")
    report["goals"] = goals(report["ratios"], report["join_detection_s"], scen.get("serving_throughput"))
    report["wall_s"] = round(time.monotonic() - t_all, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    from .plots import plot_all

    for path in plot_all(report, out.parent):
        say(f"plot {path}")
    say(f"written {out}")
    print(json.dumps({"ratios": report["ratios"], "join_detection_s": report["join_detection_s"],
                      "goals": report["goals"]}, indent=2))
    return 0


# The goals: (ratio, bound, "max" = at most / "min" = at least).
GOALS = {"discovery": (0.5, "max"), "cluster_formation": (0.6, "max"), "cold_start": (0.75, "max"),
         "serving_throughput": (0.98, "min"), "warm_restart": (0.6, "max"), "recovery": (0.5, "max")}


# Serving through spark-vllm against the same server started by hand, at each concurrency.
SERVING_GOALS = {"output_tok_s": (0.98, "min"), "ttft_p50": (1.02, "max")}


def goal(median: float, bound: float, kind: str) -> dict:
    return {"goal": f"{'<=' if kind == 'max' else '>='} {bound}", "median": median,
            "met": median <= bound if kind == "max" else median >= bound}


def goals(ratios: dict, join: dict | None, serving: dict | None = None) -> dict:
    out = {k: goal(ratios[k]["median"], bound, kind) for k, (bound, kind) in GOALS.items() if k in ratios}
    for c, figures in (serving or {}).get("by_concurrency", {}).items():
        for key, (bound, kind) in SERVING_GOALS.items():
            out[f"serving_{key}_c{c}"] = goal(figures[key]["median"], bound, kind)
    if join:
        out["join_detection"] = {"goal": "<= 1 s", "median": join["median"], "met": join["median"] <= 1.0}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
