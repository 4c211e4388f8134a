"""`spark-vllm serve` for real: two simulated Sparks (network namespaces), a real Ray
cluster across them, vLLM's CPU engine with tensor parallel 2 over Ray, and the
OpenAI client sending requests from the other Spark. Plus the fast failures: each
must fail in seconds, before Ray or the engine start, and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from orchestrator.sim.namespaces import netns
from orchestrator.sim.namespaces.nsops import namespace_pids
from orchestrator.sim.demo.run import SIM_VLLM_FLAGS, serving_cluster
from orchestrator.sim.demo.greedy import EXACT_FLAGS, NEAR_TIE, hold_against_reference, served_generations
from orchestrator.sim.models.tinymodel import make_tiny_model

from conftest import API_KEY, PREFIX, REPO, clean_env


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama"))


@pytest.fixture(scope="module")
def served(netns_ok, model, tmp_path_factory):
    lines: list[tuple[str, str]] = []
    logs = tmp_path_factory.mktemp("logs")
    # float32: TP 2 and one process then agree to ~1e-5 in the logits (see greedy.EXACT_FLAGS);
    # `--api-key` as a user gives it: a vLLM flag spark-vllm passes through untouched.
    with serving_cluster(logs, model, lambda who, line: lines.append((who, line)), prefix=PREFIX,
                         flags=(*EXACT_FLAGS, "--api-key", API_KEY)) as sim:
        yield sim, lines


def in_client(sim, code: str, api_key: str = API_KEY) -> dict:
    """Run `code` (which prints JSON) with the OpenAI client inside the worker Spark."""
    prelude = f"import json, openai, urllib.request\nBASE = {sim.url!r}\n" \
              f"client = openai.OpenAI(base_url=BASE + '/v1', api_key={api_key!r})\n"
    out = sim.client().run(sys.executable, "-c", prelude + textwrap.dedent(code),
                           capture_output=True, text=True, timeout=120, env=clean_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_ready_announced_with_tp2_over_both_nodes(served, model):
    sim, lines = served
    head = [line for who, line in lines if who == "head"]
    assert any("2 of 2 GPU nodes" in line for line in head)
    assert any("TP 2 x PP 1 over 2 GPU(s), executor ray" in line for line in head)
    ready = [line for line in head if line.startswith("ready:")]
    assert ready and sim.url in ready[0] and "engine" in ready[0]
    # The fabric check ran between the nodes before vLLM started: Gloo here, no verdict.
    check = next(i for i, line in enumerate(head) if line.startswith("fabric check ("))
    assert "gloo: 192.168.100.10 gloo/TCP, 192.168.100.11 gloo/TCP): not-comparable" in head[check]
    assert check < next(i for i, line in enumerate(head) if "starting vLLM" in line)


def test_tensor_parallel_ranks_run_at_vllms_own_priority(served):
    """Ray starts its workers at nice 15; vLLM's ranks are Ray workers and must not run
    below vLLM's engine process, which waits on them (the plan's RAY_worker_niceness=0)."""
    sim, _ = served
    ranks = {}
    for node in sim.net.nodes:
        for pid in namespace_pids(node.netns):
            try:
                p = psutil.Process(pid)
                if "RayWorkerProc" in " ".join(p.cmdline()):
                    ranks[(node.ip, pid)] = p.nice()
            except psutil.Error:
                continue
    assert {ip for ip, _ in ranks} == {n.ip for n in sim.net.nodes}, ranks  # a rank on each Spark
    assert set(ranks.values()) == {0}, ranks


def test_health_and_models(served, model):
    sim, _ = served
    got = in_client(sim, """
        health = urllib.request.urlopen(BASE + '/health', timeout=5).status
        print(json.dumps({'health': health, 'models': [m.id for m in client.models.list()]}))
    """)
    assert got == {"health": 200, "models": [model]}


def test_api_key_guards_v1(served, model):
    """The planted --api-key reached vLLM: /v1 without it is 401, /health stays open."""
    sim, _ = served
    got = in_client(sim, """
        try:
            client.models.list()
            code = 200
        except openai.AuthenticationError as e:
            code = e.status_code
        print(json.dumps({'v1': code, 'health': urllib.request.urlopen(BASE + '/health', timeout=5).status}))
    """, api_key="not-the-key")
    assert got == {"v1": 401, "health": 200}


def test_chat_completion(served, model):
    sim, _ = served
    got = in_client(sim, f"""
        r = client.chat.completions.create(model={model!r}, max_tokens=12,
                                           messages=[{{'role': 'user', 'content': '12*17'}}])
        print(json.dumps({{'text': r.choices[0].message.content, 'n': r.usage.completion_tokens,
                           'finish': r.choices[0].finish_reason}}))
    """)
    assert got["n"] == 12 and got["finish"] == "length" and isinstance(got["text"], str) and got["text"]


def test_completion(served, model):
    sim, _ = served
    got = in_client(sim, f"""
        r = client.completions.create(model={model!r}, prompt='Write a haiku about a GPU', max_tokens=8)
        print(json.dumps({{'text': r.choices[0].text, 'n': r.usage.completion_tokens}}))
    """)
    assert got["n"] == 8 and got["text"]


def test_streaming(served, model):
    sim, _ = served
    got = in_client(sim, f"""
        chunks = [c.choices[0].delta.content or '' for c in client.chat.completions.create(
            model={model!r}, max_tokens=10, stream=True,
            messages=[{{'role': 'user', 'content': 'count to ten'}}]) if c.choices]
        print(json.dumps({{'chunks': len(chunks), 'text': ''.join(chunks)}}))
    """)
    assert got["chunks"] >= 5 and got["text"]


# Prompts in the tiny model's own words, chosen for clear margins: every greedy step of
# theirs has a top-2 margin above 0.01 in transformers (asserted against NEAR_TIE below,
# in vLLM), so a token that differs cannot be a rounding tie.
GREEDY_PROMPTS = ("Hello, world!", "Engines start, workers load weights", "Pack my box with five dozen")
GREEDY_TOKENS = 16


@pytest.fixture(scope="module")
def greedy_answers(served, model):
    sim, _ = served
    out = sim.client().run(sys.executable, "-m", "orchestrator.sim.demo.client", sim.url, model, "--max-tokens",
                           str(GREEDY_TOKENS), *GREEDY_PROMPTS, capture_output=True, text=True, timeout=120,
                           env=clean_env(VLLM_API_KEY=API_KEY), cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_tp2_over_ray_gives_the_tokens_of_one_process(greedy_answers, model, tmp_path):
    """Defect 4: greedy tokens of TP 2 over the two namespace nodes equal vLLM's offline
    engine in one process (no Ray, no TP) for the same prompt ids, token for token."""
    agreement = hold_against_reference(model, greedy_answers, GREEDY_TOKENS, (*SIM_VLLM_FLAGS, *EXACT_FLAGS),
                                       tmp_path, env=clean_env())
    assert agreement.identical, agreement.to_json()
    assert agreement.prompts == len(GREEDY_PROMPTS) and agreement.tokens >= 2 * GREEDY_TOKENS
    assert agreement.min_margin > NEAR_TIE, "a near tie: choose GREEDY_PROMPTS with clear margins"


def test_a_wrong_split_would_change_those_tokens(greedy_answers, model):
    """What makes the test above able to fail: the same model with one rank's share
    lost or misplaced (what a wrong TP split computes) answers other tokens for these
    prompts. Run with transformers in float32 on the host (milliseconds for this model)."""
    import torch
    from transformers import AutoModelForCausalLM

    served = served_generations(greedy_answers)
    half = 64  # one head of the tiny model: rank 1's share under TP 2

    def no_allreduce_attention(layer):  # rank 1's heads never summed in
        layer.self_attn.o_proj.weight[:, half:] = 0

    def swapped_kv_heads(layer):  # each rank's query heads read the other rank's KV head
        for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.weight.copy_(torch.cat([proj.weight[half:], proj.weight[:half]]))

    def no_allreduce_mlp(layer):  # rank 1's half of the MLP lost
        layer.mlp.down_proj.weight[:, layer.mlp.down_proj.weight.shape[1] // 2:] = 0

    for wrong in (no_allreduce_attention, swapped_kv_heads, no_allreduce_mlp):
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        with torch.no_grad():
            for layer in m.model.layers:
                wrong(layer)
            got = [m.generate(torch.tensor([g.prompt_token_ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                              attention_mask=torch.ones(1, len(g.prompt_token_ids), dtype=torch.long))
                   [0, len(g.prompt_token_ids):].tolist() for g in served]
        assert any(tuple(t[:len(g.token_ids)]) != g.token_ids for t, g in zip(got, served)), wrong.__name__


def test_status_sees_cluster_and_server(served):
    sim, _ = served
    node = sim.client()
    out = node.run(sys.executable, "-m", "launch", "status", "--json", "--sysfs-root", node.sysfs_root,
                   "--head-ip", sim.net.nodes[0].ip, "--token-file", sim.token_file, capture_output=True,
                   text=True, timeout=60, env=clean_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["complete"] is True and status["gpus"] == 2
    assert sorted((n["ip"], n["head"]) for n in status["nodes"] if n["alive"]) == \
        [(sim.net.nodes[0].ip, True), (sim.net.nodes[1].ip, False)]
    assert status["server"]["health"] == "healthy"
    assert status["auth"] == {"ray_token": "on", "api_key": "on"}
    fabric = status["fabric"]  # from the head's run record
    assert (fabric["backend"], fabric["status"], fabric["iface"]) == ("gloo", "not-comparable", "enp1s0f1np1")
    assert fabric["busbw_gbps"] > 0 and set(fabric["transports"]) == {n.ip for n in sim.net.nodes}


def test_our_gauges_in_vllms_metrics(served):
    """One Prometheus exposition: vLLM's own series and ours, from the head's /metrics
    (outside /v1: no API key needed), scraped from the other Spark."""
    sim, _ = served
    got = in_client(sim, """
        text = urllib.request.urlopen(BASE + '/metrics', timeout=10).read().decode()
        print(json.dumps({'lines': [l for l in text.splitlines() if not l.startswith('#')]}))
    """)
    values = dict(line.rsplit(" ", 1) for line in got["lines"])
    assert any(name.startswith("vllm:") for name in values)  # vLLM's own
    assert float(values["spark_vllm_nodes_alive"]) == 2 and float(values["spark_vllm_nodes_wanted"]) == 2
    assert float(values["spark_vllm_gpus"]) == 2
    assert float(values['spark_vllm_fabric_link_up{iface="enp1s0f1np1"}']) == 1
    assert float(values['spark_vllm_fabric_link_speed_bits_per_second{iface="enp1s0f1np1"}']) == 2e11
    assert float(values['spark_vllm_phase_duration_seconds{phase="cluster"}']) > 0
    assert float(values['spark_vllm_phase_duration_seconds{phase="engine"}']) > 0
    assert float(values['spark_vllm_engine_restarts_total{cause="node-lost"}']) == 0
    assert float(values['spark_vllm_engine_restarts_total{cause="wedged"}']) == 0
    assert float(values['spark_vllm_engine_wedges_total{cause="stall"}']) == 0
    assert float(values['spark_vllm_fabric_bus_bandwidth_bytes_per_second{backend="gloo",verdict="not-comparable"}']) > 0
    assert float(values['spark_vllm_fabric_transport{node="192.168.100.11",transport="gloo/TCP"}']) == 1
    assert float(values['spark_vllm_phase_duration_seconds{phase="fabric_check"}']) > 0


def test_bench_against_the_server(served, model):
    """`spark-vllm bench --url --model`: vLLM's benchmark client from the other Spark."""
    sim, _ = served
    out = sim.client().run(sys.executable, "-m", "launch", "bench", "--url", sim.url, "--model", model,
                           "--concurrency", "1,2", "--num-prompts", "4", "--output-len", "8", "--json",
                           capture_output=True, text=True, timeout=300, env=clean_env(VLLM_API_KEY=API_KEY), cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    levels = json.loads(out.stdout)["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    assert all(lv["completed"] == 4 and lv["failed"] == 0 and lv["output_tok_s"] > 0 for lv in levels)
    assert all(0 < lv["ttft_p50_ms"] <= lv["ttft_p99_ms"] for lv in levels)
    assert "[2/2] concurrency 2:" in out.stderr


def test_stop_drains_and_leaves_nothing(served):
    """Last in this module: `spark-vllm stop` on the head ends the server (exit 0), the
    worker follows, and no process is left in either Spark."""
    sim, lines = served
    head_node = sim.net.nodes[0]
    out = head_node.run(sys.executable, "-m", "launch", "stop", "--sysfs-root", head_node.sysfs_root,
                        capture_output=True, text=True, timeout=120, env=clean_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert sim.head.proc.wait(60) == 0
    assert sim.workers[0].proc.wait(60) == 7  # the worker leaves when its head goes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(netns.pids(ns) for ns in sim.net.namespaces):
        time.sleep(0.5)
    assert [netns.pids(ns) for ns in sim.net.namespaces] == [[] for _ in sim.net.namespaces]


# --- failing fast ------------------------------------------------------------------
@pytest.fixture
def one(netns_ok):
    with netns.SimNetwork(nodes=1, prefix=PREFIX) as net:
        yield net.nodes[0]


def serve(node, *args, timeout=120):
    t = time.monotonic()
    out = node.run(sys.executable, "-m", "launch", "serve", *args, "--simulate",
                   "--sysfs-root", node.sysfs_root, capture_output=True, text=True,
                   timeout=timeout, env=clean_env(), cwd=REPO)
    return out, time.monotonic() - t


def assert_one_line_error(out, code):
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    ours = [ln for ln in out.stderr.splitlines() if ln.startswith("spark-vllm: error:")]
    assert len(ours) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return ours[0]


def test_bad_flag_fails_in_seconds_and_stops_what_started(one, model):
    """vLLM imports while Ray starts (the cold start overlaps them): a typo still fails
    before the cluster wait, and the Ray node started meanwhile is gone."""
    out, took = serve(one, model, "--no-such-vllm-flag", "3")
    line = assert_one_line_error(out, 2)
    assert "--no-such-vllm-flag" in line and "vLLM rejected the flags" in line
    assert "waiting for" not in out.stderr  # failed before the cluster wait
    assert took < 60
    assert netns.pids(one.netns) == []


def test_bad_flag_value_fails_before_ray(one, model):
    out, _ = serve(one, model, "--max-model-len", "lots")
    line = assert_one_line_error(out, 2)
    assert "max-model-len" in line or "max_model_len" in line


def test_missing_model_path(one, tmp_path):
    out, took = serve(one, str(tmp_path / "no-such-model"))
    line = assert_one_line_error(out, 9)
    assert "does not exist" in line and took < 30


def test_no_model_on_the_head(one):
    out, _ = serve(one)
    assert "no model given" in assert_one_line_error(out, 2)


def test_tp_larger_than_the_nodes_can_hold_fails_before_ray(one, model):
    """TP 4 on --nodes 2 Sparks of one GPU can never fit: fail before Ray starts, not
    after the whole --wait-timeout (nor vLLM's 30-minute placement-group wait)."""
    out, took = serve(one, model, "--nodes", "2", "--tensor-parallel-size", "4", "--wait-timeout", "600")
    line = assert_one_line_error(out, 8)
    assert "TP 4 x PP 1 needs 4 GPUs but --nodes 2 Sparks of 1 GPU each have 2" in line
    assert "pass --nodes 4, or a --tensor-parallel-size of at most 2" in line
    assert "Ray" not in out.stderr.split("spark-vllm: error:")[0]  # nothing was started
    assert took < 60
    assert netns.pids(one.netns) == []


def test_serve_attaches_to_an_existing_cluster_and_starts_no_node(one, model, tmp_path):
    """With RAY_ADDRESS (as inside `ray job submit`) serve joins the running cluster as a
    driver: no Ray node of its own. TP 4 on the head's single GPU then fails at once,
    and the cluster it attached to keeps running."""
    env = clean_env(SPARK_VLLM_RUN_DIR=str(tmp_path))
    head = one.popen(sys.executable, "-m", "launch", "head", "--simulate", "--nodes", "1",
                     "--sysfs-root", one.sysfs_root, env=env, cwd=REPO,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / f"node-{one.ip}.json").exists():
            assert head.poll() is None and time.monotonic() < deadline, "the head did not start"
            time.sleep(0.5)
        out = one.run(sys.executable, "-m", "launch", "serve", model, "--simulate", "--nodes", "1",
                      "--tensor-parallel-size", "4", "--sysfs-root", one.sysfs_root, capture_output=True,
                      text=True, timeout=120, cwd=REPO, env={**env, "RAY_ADDRESS": f"{one.ip}:6379"})
        line = assert_one_line_error(out, 8)
        assert "attaching to the Ray cluster" in out.stderr and "Ray head started" not in out.stderr
        assert "needs 4 GPUs but the cluster has 1" in line
        assert head.poll() is None  # the cluster it attached to is still up
        assert [p.name for p in tmp_path.iterdir()] == [f"node-{one.ip}.json"]  # serve ran no node
    finally:
        head.terminate()
        assert head.wait(60) == 0


def test_stop_while_the_engine_builds_waits_for_it_then_stops_cleanly(one, model, tmp_path):
    """vLLM 0.32 loses a SIGTERM that arrives while its engine builds; `spark-vllm stop`
    sees the head's "engine-starting" state, waits until vLLM is up, then stops it."""
    env = clean_env(SPARK_VLLM_RUN_DIR=str(tmp_path))
    head = one.popen(sys.executable, "-m", "launch", "serve", model, "--simulate", "--nodes", "1",
                     "--sysfs-root", one.sysfs_root, "--max-model-len", "512", "--kv-cache-memory-bytes",
                     str(64 << 20), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                     stderr=open(tmp_path / "head.log", "w"))  # a file: an unread pipe would fill and block
    try:
        record = tmp_path / f"node-{one.ip}.json"
        deadline = time.monotonic() + 120
        while not (record.exists() and json.loads(record.read_text())["state"] == "engine-starting"):
            assert head.poll() is None and time.monotonic() < deadline, "the engine never started"
            time.sleep(0.2)
        out = one.run(sys.executable, "-m", "launch", "stop", "--sysfs-root", one.sysfs_root, "--timeout", "240",
                      capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert "still starting" in out.stderr and "was killed" not in out.stderr
        assert head.wait(60) == 0
        assert "ready:" in (tmp_path / "head.log").read_text()
        assert not record.exists()
    finally:
        if head.poll() is None:
            head.kill()
