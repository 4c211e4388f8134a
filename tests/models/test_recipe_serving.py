"""A v1 recipe served on the namespace cluster (two simulated Sparks, TP 2 over Ray),
the tiny model behind the fake Hub in the head's namespace: locked, then offline; and the
demo's model (the padded SmolLM2 of `spark-vllm demo`) the same way, from demo.yaml.

One cluster set-up (namespaces, the fake Hub) for the module; each test starts the
head with `serve --recipe` and the worker with a plain `spark-vllm worker` (the recipe's
env reaches the worker's vLLM process through the Ray job, not through the worker's
own command line). The head's copy is fetched once at the locked commit, in-process;
the worker gets its copy over the fabric from the head while the head waits."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import fakehub
from conftest import PREFIX, REPO, clean_env, ns_http
from orchestrator.sim.namespaces import caches, netns
from orchestrator.sim.models import smollm
from orchestrator.sim.models.tinymodel import make_tiny_model

HUB_PORT = 8766
REPO_ID = "tiny/llama"
COMMIT = hashlib.sha1(REPO_ID.encode()).hexdigest()  # what the fake Hub answers
RECIPE = (Path(__file__).parent / "recipes" / "tiny.yaml").read_text()
PORT = 8011  # the recipe's default
DEMO_REPO = "demo/smollm2"
DEMO_COMMIT = hashlib.sha1(DEMO_REPO.encode()).hexdigest()
DEMO_PORT = 8000  # demo.yaml's, the demo's
# `spark-vllm demo`'s --models-dir default: the padded SmolLM2 is made once, shared with the demo
DEMO_MODELS = Path.home() / ".cache" / "spark-vllm" / "models"


@pytest.fixture(scope="module")
def sparks(tmp_path_factory):
    if netns.available():
        pytest.skip(f"needs network namespaces: {netns.available()}")
    tmp = tmp_path_factory.mktemp("recipe")
    shutil.copytree(make_tiny_model(tmp / "tiny"), tmp / "hub" / REPO_ID.replace("/", "--"))
    (tmp / "tiny.yaml").write_text(RECIPE)
    with netns.SimNetwork(nodes=2, prefix=PREFIX) as net, \
            fakehub.in_node(net.nodes[0], tmp / "hub", HUB_PORT, tmp, clean_env) as envs:
        yield net, envs, tmp


def hub_stats(head) -> dict:
    return fakehub.stats(head, HUB_PORT)


def cli(node, env, *args, timeout=120) -> subprocess.CompletedProcess:
    return node.run(sys.executable, "-m", "launch", *args, env=env, cwd=REPO, capture_output=True, text=True,
                    timeout=timeout)


def one_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("spark-vllm: error:")]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


def start(net, envs, tmp, name: str, *flags: str, recipe: str = "tiny.yaml"):
    head, worker = net.nodes
    log = tmp / f"{name}-head.log"
    h = head.popen(sys.executable, "-m", "launch", "serve", "--recipe", str(tmp / recipe), "--simulate",
                   *flags, *head.cli_flags(), env=envs[0], cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=open(log, "w"))
    w = worker.popen(sys.executable, "-m", "launch", "worker", "--head-ip", head.ip, "--simulate",
                     *worker.cli_flags(), env=envs[1], cwd=REPO, stdout=subprocess.DEVNULL,
                     stderr=open(tmp / f"{name}-worker.log", "w"))
    return h, w, log


def wait_for(log: Path, text: str, proc, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = log.read_text()
        if text in got:
            return got
        assert proc.poll() is None, f"the head exited {proc.returncode}:\n{got[-4000:]}"
        time.sleep(1)
    raise AssertionError(f"no {text!r} after {timeout} s:\n{log.read_text()[-4000:]}")


def stop(net, *procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(90)
        except subprocess.TimeoutExpired:
            p.kill()
    # Ray's agents may outlive a killed node: none may stay for the next test (the fake Hub does)
    deadline = time.monotonic() + 10
    while (left := leftovers(net)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def leftovers(net) -> list[int]:
    """The processes in the simulated Sparks but the fake Hub's."""
    def is_hub(pid: int) -> bool:
        try:
            return any(part.endswith("fakehub.py") for part in psutil.Process(pid).cmdline())
        except psutil.Error:
            return False
    return [pid for ns in net.namespaces for pid in netns.pids(ns) if not is_hub(pid)]


def daemon_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return ""


def cache(env: dict, repo: str = REPO_ID) -> Path:
    return Path(env["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))


def fetch_on_head(head, env: dict, repo: str, commit: str) -> None:
    """The head's copy at the locked commit, fetched (and its manifest recorded) as serve's
    prefetch does: what --offline then finds."""
    code = ("import json, os; from orchestrator.models.hub import HubAccess, fetch_here; "
            "from orchestrator.models.recipes.verify import record; "
            f"r = fetch_here({repo!r}, HubAccess.from_env(os.environ), 'head', revision={commit!r}); "
            "record(r['folder']); print(json.dumps(r))")
    out = head.run(sys.executable, "-c", code, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["commit"] == commit


def test_lock_pins_the_commit_and_versions_and_a_drifted_lock_refuses(sparks):
    net, envs, tmp = sparks
    head = net.nodes[0]
    out = cli(head, envs[0], "recipe", "lock", str(tmp / "tiny.yaml"), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    lock_file = tmp / "tiny.yaml.lock"
    lock = json.loads(lock_file.read_text())
    assert lock["revision"] == COMMIT and lock["model"] == REPO_ID
    assert lock["versions"]["vllm"] == "0.32.0" and set(lock["versions"]) == {"vllm", "ray", "torch", "nccl"}
    shown = json.loads(cli(head, envs[0], "recipe", "show", str(tmp / "tiny.yaml"), "--json").stdout)
    assert shown["lock"]["revision"] == COMMIT

    good = lock_file.read_text()
    try:
        for changed, what in (({**lock, "versions": {**lock["versions"], "vllm": "0.31.0"}}, "vllm: 0.31.0 -> 0.32.0"),
                              ({**lock, "revision": "f" * 40}, "revision: ffffffffffff -> " + COMMIT[:12])):
            lock_file.write_text(json.dumps(changed))
            out = cli(head, envs[0], "serve", "--recipe", str(tmp / "tiny.yaml"), "--simulate", *head.cli_flags())
            assert out.returncode == 20, out.stderr[-2000:]
            assert what in one_error(out.stderr) and "--allow-drift" in one_error(out.stderr)
            assert "Ray head started" not in out.stderr  # refused before anything started
    finally:
        lock_file.write_text(good)


def test_a_locked_recipe_serves_offline_with_its_env_on_the_worker(sparks):
    """The head holds the locked commit (fetched once, before); the worker holds nothing and
    gets the head's copy over the fabric; then every node's copy is checked, and the Hub is
    not asked once."""
    net, envs, tmp = sparks
    head, worker = net.nodes
    assert (tmp / "tiny.yaml.lock").exists(), "needs the lock of the test before"
    shutil.rmtree(cache(envs[1]), ignore_errors=True)
    fetch_on_head(head, envs[0], REPO_ID, COMMIT)
    asked = hub_stats(head)["requests"]

    h, w, log = start(net, envs, tmp, "offline", "--offline")
    try:
        text = wait_for(log, "ready:", h)
        assert hub_stats(head)["requests"] == asked + 0, "the Hub was asked while serving --offline"
        assert f"the copies on {head.ip}, {worker.ip} are complete and identical" in text
        assert list(cache(envs[1]).glob(f"snapshots/{COMMIT}/model.safetensors"))  # copied from the head
        assert (cache(envs[1]) / "spark-vllm" / f"{COMMIT}.json").exists()  # its manifest, recorded then
        assert "container ghcr.io/example/vllm-node:latest not used" in text
        got = ns_http(worker, f"http://{head.ip}:{PORT}/v1/models")
        assert got["status"] == 200 and [m["id"] for m in json.loads(got["body"])["data"]] == ["tiny"]
        done = ns_http(worker, f"http://{head.ip}:{PORT}/v1/completions",
                       {"model": "tiny", "prompt": "Hello", "max_tokens": 4}, timeout=120)  # a busy 2-core machine
        assert done["status"] == 200, done
        # the recipe's env in vLLM's process on the worker Spark, not in its raylet
        envs_seen = {}
        for pid in netns.pids(worker.netns):
            try:
                p = psutil.Process(pid)
                envs_seen[" ".join(p.cmdline())[:80]] = p.environ()
            except psutil.Error:
                continue
        workers = [c for c, e in envs_seen.items() if "ray::" in c and e.get("SPARK_RECIPE_PROBE") == "17"]
        assert workers, f"no Ray worker with the recipe's env on the worker: {list(envs_seen)}"
        assert all(e.get("HF_HUB_OFFLINE") == "1" for c, e in envs_seen.items() if c in workers)
        raylets = [e for c, e in envs_seen.items() if "raylet" in c]
        assert raylets and all("SPARK_RECIPE_PROBE" not in e for e in raylets)
    finally:
        stop(net, h, w)


def test_offline_refuses_a_corrupt_copy_on_a_node(sparks):
    net, envs, tmp = sparks
    head, worker = net.nodes
    blobs = list(cache(envs[1]).glob(f"snapshots/{COMMIT}/model.safetensors"))
    assert blobs, "needs the worker's copy of the test before"
    blob = blobs[0].resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash tells
    blob.write_bytes(bytes(data))
    h, w, log = start(net, envs, tmp, "corrupt", "--offline")
    try:
        assert h.wait(300) == 21
        line = one_error(log.read_text())
        assert f"{worker.ip}: model.safetensors does not match its SHA-256" in line
        assert "Starting vLLM" not in log.read_text() and "ready:" not in log.read_text()
        deadline, names = time.monotonic() + 30, ["?"]  # the head's Ray node went with it
        while time.monotonic() < deadline:
            names = [n for n in (daemon_name(p) for p in netns.pids(head.netns)) if n in ("raylet", "gcs_server")]
            if not names:
                break
            time.sleep(1)
        assert not names, f"left running on the head: {names}"
    finally:
        stop(net, h, w)


@pytest.fixture(scope="module")
def demo_repo(sparks):
    """The demo's padded SmolLM2, made once by the demo's own function in the demo's cache,
    as a second repository of the fake Hub (linked, not copied: 290 MB)."""
    folder = sparks[2] / "hub" / DEMO_REPO.replace("/", "--")
    if not folder.exists():
        made = smollm.make_smollm(DEMO_MODELS)
        folder.mkdir()
        for f in made.iterdir():
            (folder / f.name).symlink_to(f)
    return folder


def test_the_demo_recipe_serves_smollm2_locked_and_offline(sparks, demo_repo):
    """The done-when of issue 21: demo.yaml (the demo's model and CPU-simulation flags) locked,
    then served with `serve --recipe --offline` on the head and a plain `spark-vllm worker`,
    the worker's copy coming over the fabric; the playbook's chat question answered in words
    under the recipe's served name; both stopped, nothing left."""
    net, envs, tmp = sparks
    head, worker = net.nodes
    t0 = time.monotonic()
    shutil.copy(Path(__file__).parent / "recipes" / "demo.yaml", tmp / "demo.yaml")
    out = cli(head, envs[0], "recipe", "lock", str(tmp / "demo.yaml"), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    lock = json.loads((tmp / "demo.yaml.lock").read_text())
    assert lock["model"] == DEMO_REPO and lock["revision"] == DEMO_COMMIT and lock["recipe"] == "smollm2-demo"
    shutil.rmtree(cache(envs[1], DEMO_REPO), ignore_errors=True)
    fetch_on_head(head, envs[0], DEMO_REPO, DEMO_COMMIT)
    asked = hub_stats(head)["requests"]

    # each simulated Spark compiles into its own caches, as the demo's do
    demo_envs = [caches.node_env(env, tmp / "caches", i) for i, env in enumerate(envs)]
    t1 = time.monotonic()
    h, w, log = start(net, demo_envs, tmp, "demo", "--offline", recipe="demo.yaml")
    try:
        text = wait_for(log, "ready:", h, timeout=600)
        t2 = time.monotonic()
        assert hub_stats(head)["requests"] == asked, "the Hub was asked while serving --offline"
        assert f"the copies on {head.ip}, {worker.ip} are complete and identical" in text
        assert list(cache(envs[1], DEMO_REPO).glob(f"snapshots/{DEMO_COMMIT}/model.safetensors"))  # the head's
        assert "recipe smollm2-demo: demo/smollm2 --served-model-name smollm2-135m" in text
        got = ns_http(worker, f"http://{head.ip}:{DEMO_PORT}/v1/models")
        assert got["status"] == 200 and [m["id"] for m in json.loads(got["body"])["data"]] == [smollm.SERVED_NAME]
        chat = ns_http(worker, f"http://{head.ip}:{DEMO_PORT}/v1/chat/completions",
                       {"model": smollm.SERVED_NAME, "max_tokens": 32, "temperature": 0,
                        "messages": [{"role": "user", "content": "What is 12*17?"}]}, timeout=180)
        assert chat["status"] == 200, chat
        answer = json.loads(chat["body"])
        words = answer["choices"][0]["message"]["content"]
        assert answer["model"] == smollm.SERVED_NAME and answer["usage"]["completion_tokens"] > 0
        # a real model answers text (the tiny random one would answer noise)
        assert words.strip() and all(c.isprintable() or c in "\n\t" for c in words), repr(words)
        assert re.search(r"\w\w", words), repr(words)
        t3 = time.monotonic()
        print(f"smollm2 through demo.yaml answered {words!r}")
    finally:
        h.terminate()  # what `spark-vllm stop` sends; the worker follows its head
        with contextlib.suppress(subprocess.TimeoutExpired):
            h.wait(90)
            w.wait(90)
        deadline = time.monotonic() + 20
        while (left := leftovers(net)) and time.monotonic() < deadline:
            time.sleep(0.5)
        stop(net, h, w)  # whatever is left, killed: none may stay for the next test
    print(f"seconds: lock and the head's fetch {t1 - t0:.1f}, serve to ready {t2 - t1:.1f}, "
          f"requests {t3 - t2:.1f}, stop {time.monotonic() - t3:.1f}")
    assert h.returncode == 0, log.read_text()[-3000:]  # SIGTERM: drained and stopped
    assert w.returncode in (0, 7), w.returncode  # 7: its head went away
    assert left == [], f"left running in the simulated Sparks: {[daemon_name(p) for p in left]}"
