"""Simulated Sparks for the cluster tests: two network namespaces and the real
`python -m launch head|worker --simulate` processes started in them, their output in
files, every wait with a deadline, and whatever runs in them killed on the way out.
Shared by tests/cluster (the cluster's own tests and `ray job submit`)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.sim.namespaces import caches, netns

from conftest import PREFIX, RAY_TOKEN, REPO, clean_env

HEAD_IP, WORKER_IP = "192.168.100.10", "192.168.100.11"
START_S = 120  # Ray starting on a busy 2-core machine; usually 5 to 20 s
READY = "head ready"


class NodeProc:
    """One `spark-vllm head|worker` process in a node, its output in files."""

    def __init__(self, node: netns.SimNode, role: str, args: tuple[str, ...], env: dict[str, str],
                 tmp: Path, python: str = sys.executable) -> None:
        self.node, self.role = node, role
        self.out, self.err = tmp / f"{role}-{node.index}.out", tmp / f"{role}-{node.index}.err"
        cmd = [python, "-m", "launch", role, "--sysfs-root", node.sysfs_root, "--simulate", *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            # `ip netns exec` execs the command: this pid is spark-vllm's own.
            self.proc = node.popen(*cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO)

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    @property
    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_for(self, text: str, timeout: float = START_S, watch: tuple["NodeProc", ...] = ()) -> None:
        """Until `text` is in stderr; fails at once if this process, or one of `watch`,
        ends first."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            for p in (self, *watch):
                if p.proc.poll() is not None:
                    pytest.fail(f"{p.role} exited {p.proc.returncode} while waiting for {text!r}:\n"
                                f"{p.stderr}\n--- {self.role}:\n{self.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.role}: no {text!r} within {timeout} s:\n{self.stderr}")
            time.sleep(0.2)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.role} still running after {timeout} s:\n{self.stderr}")

    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.startswith("spark-vllm: error: ")]
        assert len(lines) == 1 and "Traceback" not in self.stderr, self.stderr
        return lines[0]


class Sparks:
    """Two simulated Sparks and the spark-vllm processes started in them, run by `python`
    (another venv's, for `make compat`)."""

    def __init__(self, net: netns.SimNetwork, tmp: Path, python: str = sys.executable) -> None:
        self.net, self.tmp, self.python = net, tmp, python
        self.head_node, self.worker_node = net.nodes
        # Our own run records: another test run's node on the same address must not be stopped.
        # Token auth is on by default, the token in ~/.ray/auth_token: a HOME of this test's
        # own holds the planted token (one filesystem: the head's file is the worker's copy).
        home = tmp / "home"
        (home / ".ray").mkdir(parents=True)
        (home / ".ray" / "auth_token").write_text(RAY_TOKEN)
        self.base_env = clean_env(SPARK_VLLM_RUN_DIR=str(tmp / "run"), HOME=str(home))
        for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                  "RAY_JOB_CONFIG_JSON_ENV_VAR"):
            self.base_env.pop(k, None)
        self.procs: list[NodeProc] = []

    def env(self, extra: dict[str, str] | None, node: netns.SimNode | None = None) -> dict[str, str]:
        """The environment of a process in `node` (default the head): its own compile caches."""
        return caches.node_env({**self.base_env, **(extra or {})}, self.tmp / "caches", (node or self.head_node).index)

    def head(self, *args: str, env: dict[str, str] | None = None) -> NodeProc:
        p = NodeProc(self.head_node, "head", args, self.env(env, self.head_node), self.tmp, self.python)
        self.procs.append(p)
        return p

    def worker(self, *args: str, env: dict[str, str] | None = None, head_ip: str = HEAD_IP) -> NodeProc:
        p = NodeProc(self.worker_node, "worker", ("--head-ip", head_ip, *args), self.env(env, self.worker_node), self.tmp, self.python)
        self.procs.append(p)
        return p

    def cli(self, node: netns.SimNode, *args: str, env: dict[str, str] | None = None,
            timeout: float = 90, sysfs: bool = True) -> subprocess.CompletedProcess:
        """`spark-vllm ARGS` in `node`; `sysfs=False`: as a user types it, without the
        simulated RoCE tree (discovery inside the namespace then finds no RoCE device)."""
        cmd, *rest = args
        flags = ("--sysfs-root", node.sysfs_root) if sysfs else ()
        return node.run(self.python, "-m", "launch", cmd, *flags, *rest,
                        env=self.env(env, node), capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def status(self, node: netns.SimNode, *args: str, env: dict[str, str] | None = None):
        r = self.cli(node, "status", "--json", "--head-ip", HEAD_IP, *args, env=env)
        assert "Traceback" not in r.stderr, r.stderr
        return r, (json.loads(r.stdout) if r.stdout.strip() else None)

    def stop(self, node: netns.SimNode, sysfs: bool = True) -> subprocess.CompletedProcess:
        r = self.cli(node, "stop", "--timeout", "60", sysfs=sysfs)
        assert r.returncode == 0, r.stderr
        return r

    # --- what is left -------------------------------------------------------------
    def left(self, nodes: tuple[netns.SimNode, ...] | None = None) -> list[str]:
        """What still runs in our namespaces (`ip netns pids`, zombies excluded), with
        command lines; Ray daemons marked. Other Ray clusters on this machine (other
        people's, on the same addresses) live in other namespaces and are not looked at."""
        found = []
        for ns in [n.netns for n in nodes] if nodes else self.net.namespaces:
            for pid in netns.pids(ns):
                try:
                    p = psutil.Process(pid)
                    name, cmd = p.name(), " ".join(p.cmdline())
                except psutil.Error:
                    continue  # ended meanwhile
                ray_daemon = name in ("raylet", "gcs_server") and (HEAD_IP in cmd or WORKER_IP in cmd)
                found.append(f"{ns}: {'stray ' + name + ' ' if ray_daemon else ''}{pid} {cmd[:160]}")
        return found

    def assert_nothing_left(self, *nodes: netns.SimNode, timeout: float = 15) -> None:
        """Everything in the namespaces (of `nodes`, default all) ends on its own within `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := self.left(nodes)) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not left, "left running:\n" + "\n".join(left)

    def kill_all(self, timeout: float = 10) -> None:
        """SIGKILL everything in our namespaces, again until nothing is left (a dying
        raylet may still be forking), and reap our own children."""
        for ns in self.net.namespaces:
            netns.kill_processes(ns, timeout)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(10)


@contextlib.contextmanager
def two_sparks(tmp: Path, python: str = sys.executable):
    """Two Sparks; whatever runs in them is killed on the way out, pass or fail."""
    with netns.SimNetwork(nodes=2, prefix=PREFIX) as net:
        sparks = Sparks(net, tmp, python)
        try:
            yield sparks
        finally:
            sparks.kill_all()
        sparks.assert_nothing_left(timeout=0)  # (only when the test passed: not to hide its failure)


@contextlib.contextmanager
def healthy_cluster(tmp: Path):
    """Head and worker up, the head ready: (sparks, head, worker)."""
    with two_sparks(tmp) as s:
        head = s.head("--nodes", "2", "--wait-timeout", str(START_S))
        worker = s.worker("--join-timeout", str(START_S))
        head.wait_for(READY, 2 * START_S, watch=(worker,))
        worker.wait_for("joined the cluster")
        yield s, head, worker
