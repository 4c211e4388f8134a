"""The built image's entrypoint as PID 1, in two simulated Sparks (run as root after
benchmarks/container_build.sh): `spark-vllm head` and `worker` each run as PID 1 of
their own PID namespace (`unshare --pid --fork --mount`, chroot into the image's
mounted root filesystem), inside the namespace Sparks. Checks: the start summary,
`spark-vllm health` on both (the worker has no server), SIGTERM to a worker's PID 1
(exit 0), SIGTERM to the head's (exit 0; the worker then exits 7 for its restart
policy), zombies seen under PID 1, and that nothing is left. `--light`: only what
starts no Ray (a worker waiting for an absent head). Writes
benchmarks/results/container_pid1[_light].json; tests/test_container_image.py runs both.

    .venv/bin/python -m benchmarks.container_pid1 [--light] [IMAGE]
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from orchestrator.sim.namespaces import netns

DEFAULT_IMAGE = "localhost/spark-vllm:standin"
RESULTS = Path(__file__).parent / "results"


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


class Pid1:
    """`spark-vllm ARGS` as PID 1 of a new PID namespace inside `node`, chrooted into `root`."""

    def __init__(self, node: netns.SimNode, root: str, args: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.node, self.root, self.log = node, root, log
        sysfs = f"/run/sysfs-{node.index}"
        os.makedirs(root + sysfs, exist_ok=True)
        script = (f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
                  f"mount --rbind /sys {root}/sys && mount --bind {node.sysfs_root} {root}{sysfs} && "
                  f"exec chroot {root} /usr/local/bin/spark-vllm {' '.join(args)} --sysfs-root {sysfs}")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", **(env or {})}
        self.proc = node.popen("unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                               "sh", "-c", script, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    @property
    def pid1(self) -> int:
        """PID 1's pid as seen from here: the unshare process's only child."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = psutil.Process(self.proc.pid).children()
            if kids:
                return kids[0].pid
            time.sleep(0.1)
        raise RuntimeError("no PID 1")

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 180) -> float:
        t = time.monotonic()
        while text not in self.text():
            if self.proc.poll() is not None or time.monotonic() - t > timeout:
                raise RuntimeError(f"no {text!r} (exit {self.proc.poll()}):\n{self.text()[-3000:]}")
            time.sleep(0.2)
        return time.monotonic() - t

    def inside(self, *args: str) -> subprocess.CompletedProcess:
        """Another command in the same container (its mount, PID and network namespaces)."""
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-p", "-n", "--", "chroot", self.root,
                               "/usr/local/bin/spark-vllm", *args, "--sysfs-root", f"/run/sysfs-{self.node.index}"],
                              capture_output=True, text=True, timeout=60)

    def zombies(self) -> int:
        return sum(1 for p in psutil.Process(self.pid1).children() if p.status() == psutil.STATUS_ZOMBIE)

    def stop(self, timeout: float = 90) -> tuple[int, float]:
        t = time.monotonic()
        os.kill(self.pid1, signal.SIGTERM)
        return self.proc.wait(timeout), time.monotonic() - t


def run_pid1(image: str, light: bool, prefix: str = "svbench") -> dict:
    """One scenario on the image: `light` (no Ray: a worker waiting for an absent head),
    else the head and a worker as PID 1. Returns {"image", "checks", "logs", ...}."""
    ctr = buildah("from", image)
    root = buildah("mount", ctr)
    logs = Path(tempfile.mkdtemp(prefix=f"container-pid1-{os.getpid()}-"))
    result: dict = {"image": image, "checks": {}, "logs": str(logs)}
    checks = result["checks"]
    procs: list[Pid1] = []
    try:
        with netns.SimNetwork(nodes=2, prefix=prefix) as net:
            head_node, worker_node = net.nodes
            if light:
                run_light(root, head_node, worker_node, logs, checks, procs, net)
            else:
                result["head_ready_s"] = run_full(root, head_node, worker_node, logs, checks, procs, net)
    finally:
        for p in procs:
            if p.proc.poll() is None:
                with contextlib.suppress(Exception):
                    os.kill(p.pid1, signal.SIGKILL)
                p.proc.wait(30)
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    return result


def run_full(root, head_node, worker_node, logs, checks, procs, net) -> float:
    """Head and worker up as PID 1, health on both, SIGTERM to each; the head's ready time."""
    common = ["--simulate", "--nodes", "2", "--wait-timeout", "180"]
    # The worker as `container run --worker HEAD_IP` starts it: the head from the environment.
    to_head = {"SPARK_VLLM_HEAD_IP": head_node.ip}
    head = Pid1(head_node, root, ["head", *common], logs / "head.log")
    procs.append(head)
    worker = Pid1(worker_node, root, ["worker", *common], logs / "worker.log", env=to_head)
    procs.append(worker)
    ready_s = round(head.wait_for("head ready"), 1)
    worker.wait_for("joined the cluster")
    checks["start_summary"] = next(ln for ln in head.text().splitlines() if "settings:" in ln)
    checks["worker_start_summary"] = next(ln for ln in worker.text().splitlines() if "settings:" in ln)
    checks["pid1_is_spark_vllm"] = "spark-vllm" in " ".join(psutil.Process(head.pid1).cmdline())
    for who, p in (("head", head), ("worker", worker)):
        r = p.inside("health")
        checks[f"health_{who}"] = [r.returncode, r.stdout.strip() or r.stderr.strip()[-300:]]
    checks["zombies_under_pid1_while_running"] = {"head": head.zombies(), "worker": worker.zombies()}

    code, took = worker.stop()
    checks["sigterm_worker"] = {"exit": code, "seconds": round(took, 1),
                                "left_in_namespace": netns.pids(worker_node.netns)}
    worker = Pid1(worker_node, root, ["worker", *common], logs / "worker2.log", env=to_head)
    procs.append(worker)
    worker.wait_for("joined the cluster")
    code, took = head.stop()
    checks["sigterm_head"] = {"exit": code, "seconds": round(took, 1),
                              "last_line": head.text().strip().splitlines()[-1]}
    wcode = worker.proc.wait(120)
    checks["worker_after_head_left"] = {"exit": wcode, "last_line": worker.text().strip().splitlines()[-1]}
    checks["left_in_namespaces"] = netns.wait_empty(net.namespaces)
    checks["tracebacks"] = sum("Traceback" in p.text() for p in procs)
    return ready_s


def run_light(root, head_node, worker_node, logs, checks, procs, net) -> None:
    waiting = ["worker", "--head-ip", head_node.ip, "--simulate"]
    w = Pid1(worker_node, root, [*waiting, "--join-timeout", "120"], logs / "waiting.log")
    procs.append(w)
    w.wait_for("settings:")
    time.sleep(2)  # let it reach the wait for the head
    checks["start_summary"] = next((ln for ln in w.text().splitlines() if "settings:" in ln), None)
    checks["pid1_is_spark_vllm"] = "spark-vllm" in " ".join(psutil.Process(w.pid1).cmdline())
    r = w.inside("health")
    checks["health_while_joining"] = [r.returncode, r.stdout.strip() or r.stderr.strip()[-300:]]
    code, took = w.stop()
    checks["sigterm_while_joining"] = {"exit": code, "seconds": round(took, 1),
                                       "last_line": w.text().strip().splitlines()[-1]}
    t = time.monotonic()
    f = Pid1(worker_node, root, [*waiting, "--join-timeout", "3"], logs / "unreachable.log")
    procs.append(f)
    checks["head_unreachable"] = {"exit": f.proc.wait(60), "seconds": round(time.monotonic() - t, 1),
                                  "last_line": f.text().strip().splitlines()[-1]}
    checks["left_in_namespaces"] = netns.wait_empty(net.namespaces)
    checks["tracebacks"] = sum("Traceback" in p.text() for p in procs)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    image = args[0] if args else DEFAULT_IMAGE
    light = "--light" in argv
    result = run_pid1(image, light)
    out = RESULTS / f"container_pid1{'_light' if light else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
