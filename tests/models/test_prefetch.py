"""Weights on both nodes of the namespace cluster, from a local Hub that runs inside the
head's namespace (reachable from both over the veth), through the real huggingface_hub
client: `spark-vllm download` on a running cluster, and serve's prefetch while it waits
for the worker, followed by the memory fit refusing a too-small GPU (exit 12)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fakehub
from conftest import PREFIX, REPO, clean_env
from orchestrator.sim.namespaces import netns
from orchestrator.sim.models.tinymodel import make_tiny_model

HUB_PORT = 8765
BIG = "hugging-quants/Meta-Llama-3.1-405B-Instruct-AWQ-INT4"  # the tiny model, under the 405B's name (its preset)


@pytest.fixture(scope="module")
def sparks(tmp_path_factory):
    """Two simulated Sparks, the fake Hub serving tiny/llama and gated/llama in the head's
    namespace, and each node's environment (its own HF cache, the Hub's address)."""
    if netns.available():
        pytest.skip(f"needs network namespaces: {netns.available()}")
    tmp = tmp_path_factory.mktemp("prefetch")
    root = tmp / "hub"
    model = make_tiny_model(tmp / "tiny")
    for repo in ("tiny--llama", "gated--llama", BIG.replace("/", "--")):
        shutil.copytree(model, root / repo)
    (root / "gated--llama" / ".gated").touch()
    with netns.SimNetwork(nodes=2, prefix=PREFIX) as net, \
            fakehub.in_node(net.nodes[0], root, HUB_PORT, tmp, clean_env) as envs:
        yield net, envs, tmp


def hub_bytes(head) -> int:
    """Bytes of files the fake Hub has sent so far (asked from inside the head's namespace)."""
    return fakehub.stats(head, HUB_PORT)["file_bytes"]


def cache(env: dict, repo: str) -> Path:
    return Path(env["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))


def wait_for(path: Path, what: str, procs, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if what in text:
            return text
        for p in procs:
            assert p.poll() is None, f"a node exited ({p.returncode}): {text[-2000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {what!r} in {path} after {timeout} s")


def launch(node, env, log: Path, *args):
    return node.popen(sys.executable, "-m", "launch", *args, *node.cli_flags(), env=env, cwd=REPO,
                      stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def test_download_on_a_running_cluster(sparks):
    net, envs, tmp = sparks
    head, worker = net.nodes
    h = launch(head, envs[0], tmp / "head.log", "head", "--simulate", "--nodes", "2")
    w = launch(worker, envs[1], tmp / "worker.log", "worker", "--head-ip", head.ip, "--simulate")
    try:
        wait_for(tmp / "head.log", "cluster complete", [h, w])

        def download(repo, *flags):
            return head.run(sys.executable, "-m", "launch", "download", repo, *flags, *head.cli_flags(),
                            env=envs[0], cwd=REPO, capture_output=True, text=True, timeout=180)

        gated = download("gated/llama")
        assert gated.returncode == 13, gated.stderr[-2000:]
        assert "request access at https://huggingface.co/gated/llama" in gated.stderr
        assert not any(cache(env, "gated/llama").joinpath("blobs").exists() for env in envs)  # not a byte

        assert download("nobody/nothing").returncode == 9

        served = hub_bytes(head)
        out = download("tiny/llama", "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        nodes = json.loads(out.stdout)["nodes"]
        assert set(nodes) == {head.ip, worker.ip}
        for env, ip in zip(envs, (head.ip, worker.ip)):
            snap = Path(nodes[ip]["folder"])
            assert snap.is_relative_to(cache(env, "tiny/llama"))  # each node's own cache
            assert (snap / "config.json").exists() and (snap / "model.safetensors").exists()
            assert nodes[ip]["downloaded_bytes"] == nodes[ip]["total_bytes"] > 0
        assert nodes[worker.ip]["source"] == "head"  # copied over the fabric, checksummed
        total = nodes[head.ip]["total_bytes"]
        assert hub_bytes(head) - served == total  # one Hub download for the cluster
        again = json.loads(download("tiny/llama", "--json").stdout)["nodes"]
        assert [r["downloaded_bytes"] for r in again.values()] == [0, 0]

        for env in envs:
            shutil.rmtree(cache(env, "tiny/llama"))
        served = hub_bytes(head)
        each = download("tiny/llama", "--json", "--hub-on-every-node")
        assert each.returncode == 0, each.stderr[-2000:]
        assert hub_bytes(head) - served == 2 * total
    finally:
        stop(h, w)


def test_serve_applies_the_preset_prefetches_on_both_nodes_then_refuses_a_model_too_big(sparks):
    """The 405B's handle (the tiny model behind it): its preset is taken, less the flag the
    user gave in another spelling; the weights reach both nodes while the head waits; the
    fit check then refuses a 9 GB GPU with the numbers, before any engine starts."""
    net, envs, tmp = sparks
    head, worker = net.nodes
    h = launch(head, envs[0], tmp / "serve-head.log", "serve", BIG, "--simulate", "--nodes", "2",
               "--gpu-memory", "9G", "--max_model_len=512")
    w = launch(worker, envs[1], tmp / "serve-worker.log", "serve", "--head-ip", head.ip, "--simulate")
    try:
        assert h.wait(240) == 12
        log = (tmp / "serve-head.log").read_text()
        assert (f"preset for {BIG}: --gpu-memory-utilization 1.0 --max-num-seqs 1 --max-num-batched-tokens 256; "
                "your flags replace: --max-model-len 256") in log
        assert f"{BIG} is on every node: {head.ip}" in log and worker.ip in log.split("is on every node")[1]
        errors = [ln for ln in log.splitlines() if ln.startswith("spark-vllm: error:")]
        assert len(errors) == 1 and f"{BIG} does not fit: per GPU: weights" in errors[0], log[-3000:]
        # 9 GB of unified memory less the host's 8 GiB: 0.4 GiB left, short of the 2 GiB runtime alone
        assert "= 2.0 GiB of 0.4 GiB usable, over 2 GPU(s)" in errors[0]
        assert "Traceback" not in log
        for env in envs:
            assert list(cache(env, BIG).glob("snapshots/*/model.safetensors"))
    finally:
        stop(h, w)


def test_serve_of_a_gated_model_fails_before_ray(sparks):
    net, envs, tmp = sparks
    head = net.nodes[0]
    out = head.run(sys.executable, "-m", "launch", "serve", "gated/llama", "--simulate", *head.cli_flags(),
                   env=envs[0], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 13, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("spark-vllm: error:")]
    assert len(errors) == 1 and "gated/llama is gated" in errors[0] and "HF_TOKEN" in errors[0]
    assert "Ray head started" not in out.stderr and netns.pids(head.netns) != []  # only the fake Hub runs there
