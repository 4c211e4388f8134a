"""The side-by-side benchmark's arithmetic and its README table, on plain data."""

from __future__ import annotations

from benchmarks import cpu_profile
from benchmarks.report import cpu_markdown, markdown, phases_markdown
from benchmarks.side_by_side import goals, ratio, serving_curve, serving_scenario, spread


def side(total: float, tok_s: float, ttft: float, serve_cpu: float = 1.0) -> dict:
    cpu = {"192.168.100.10": {"spark-vllm-serve": serve_cpu, "vllm-tp-worker": 8.0, "total": serve_cpu + 8.0}}
    return {"total_s": total, "serving": [{"concurrency": 1, "output_tok_s": tok_s / 4, "ttft_p50_ms": ttft,
                                           "tpot_p50_ms": 2.0, "itl_p99_ms": 5.0, "cpu_s": cpu},
                                          {"concurrency": 16, "output_tok_s": tok_s, "ttft_p50_ms": ttft * 2,
                                           "tpot_p50_ms": 3.0, "itl_p99_ms": 9.0, "cpu_s": cpu}]}


PAIRS = [{"ours": side(30, 1000, 10), "theirs": side(40, 1000, 10)},
         {"ours": side(36, 900, 12), "theirs": side(40, 1000, 10)},
         {"ours": side(20, 1100, 8), "theirs": side(40, 1000, 10)}]


def test_ratio_is_the_median_of_the_pairs_with_the_spread():
    r = ratio(PAIRS, lambda s: s["total_s"])
    assert (r["median"], r["min"], r["max"], r["n"]) == (0.75, 0.5, 0.9, 3)
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "values": [3.0, 1.0, 2.0]}


def test_serving_curve_takes_each_levels_median():
    curve = serving_curve(PAIRS, "ours")
    assert [c["concurrency"] for c in curve] == [1, 16]
    assert curve[1]["output_tok_s"] == 1000.0 and curve[0]["ttft_p50_ms"] == 10.0


def test_goals_compare_each_median_with_its_bound():
    g = goals({"cold_start": {"median": 0.8}, "serving_throughput": {"median": 0.99},
               "discovery": {"median": 0.2}}, {"median": 0.3})
    assert g["cold_start"]["met"] is False and g["cold_start"]["goal"] == "<= 0.75"
    assert g["serving_throughput"]["met"] is True and g["discovery"]["met"] is True
    assert g["join_detection"]["met"] is True


def test_readme_table_rows_come_from_the_json():
    cold = ratio(PAIRS, lambda s: s["total_s"])
    report = {"ratios": {"cold_start": cold}, "goals": goals({"cold_start": cold}, {"median": 0.25}),
              "join_detection_s": {"median": 0.25, "min": 0.2, "max": 0.3, "n": 3},
              "scenarios": {"cold_start": {"ours_s": spread([30, 36, 20]), "theirs_s": spread([40, 40, 40])}}}
    table = markdown(report)
    assert "| cold start to the first token | 0.75 (0.50 to 0.90, n=3) | lower | <= 0.75 | yes |" in table
    assert "0.25 s (0.20 to 0.30, n=3)" in table
    assert "spark-vllm 30.0, shell flow 40.0" in table


def test_phases_table_lists_each_flows_median_marks_in_time_order():
    cold = {"pairs": [{"ours": {"marks_s": {"healthy": 20.0, "ray_started": 3.0, "first_token": 21.0}},
                       "theirs": {"marks_s": {"ray_head_started": 5.0, "healthy": 30.0, "first_token": None}}},
                      {"ours": {"marks_s": {"healthy": 24.0, "ray_started": 4.0, "first_token": 25.0}},
                       "theirs": {"marks_s": {"ray_head_started": 7.0, "healthy": 32.0, "first_token": 33.0}}}]}
    table = phases_markdown({"scenarios": {"cold_start": cold}}).splitlines()
    assert table[2] == "| spark-vllm | Ray head start 3.5, engine build (to /health) 22.0, first token 23.0 |"
    assert table[3] == "| shell flow | ray start --head 6.0, engine build (to /health) 31.0, first token 33.0 |"
    assert phases_markdown({"scenarios": {}}) == ""


def test_serving_is_compared_at_every_concurrency_with_its_goals():
    slow_at_one = [{"ours": {"serving": [dict(lv, output_tok_s=lv["output_tok_s"] * (0.5 if lv["concurrency"] == 1
                                                                                  else 1.0))
                                         for lv in p["ours"]["serving"]]}, "theirs": p["theirs"]} for p in PAIRS]
    s = serving_scenario(slow_at_one)
    assert s["concurrency"] == 16 and set(s["by_concurrency"]) == {"1", "16"}
    assert s["by_concurrency"]["16"]["output_tok_s"]["median"] == 1.0
    assert s["by_concurrency"]["1"]["output_tok_s"]["median"] == 0.5
    g = goals({}, None, s)
    assert g["serving_output_tok_s_c16"]["met"] is True
    assert g["serving_output_tok_s_c1"]["met"] is False  # one slow level fails its own goal
    assert g["serving_ttft_p50_c1"]["goal"] == "<= 1.02"
    table = markdown({"ratios": {}, "goals": g, "scenarios": {"serving_throughput": s}})
    assert "| serving at concurrency 1: output tok/s | 0.50 (0.45 to 0.55, n=3) | higher | >= 0.98 | no |" in table


def test_cpu_table_puts_both_flows_side_by_side():
    pairs = [{"ours": side(30, 1000, 10, serve_cpu=4.0), "theirs": side(40, 1000, 10, serve_cpu=0.0)}
             for _ in range(3)]
    s = serving_scenario(pairs)
    assert s["cpu_s_at_top"]["ours"]["192.168.100.10"]["spark-vllm-serve"] == 4.0
    rows = cpu_markdown({"scenarios": {"serving_throughput": s}}).splitlines()
    assert rows[0] == "| process (CPU s at concurrency 16) | 192.168.100.10 spark-vllm | 192.168.100.10 shell flow |"
    assert "| spark-vllm-serve | 4.0 | 0.0 |" in rows
    assert rows[-1] == "| total | 12.0 | 8.0 |"


def test_processes_are_named_by_what_they_are():
    assert cpu_profile.role("ray::RayWorkerProc.run") == "vllm-tp-worker"
    assert cpu_profile.role(["VLLM::EngineCore"]) == "vllm-engine-core"
    assert cpu_profile.role([".venv/bin/python", "-m", "launch", "serve", "/m", "--simulate"]) == "spark-vllm-serve"
    assert cpu_profile.role([".venv/bin/python", "-m", "launch", "bench", "--url", "x"]) == "bench-client"
    assert cpu_profile.role(["python", "-m", "benchmarks.shell_flow", "vllm", "serve", "m"]) == "vllm-serve"
    assert cpu_profile.role(["/x/ray/core/src/ray/raylet/raylet", "--node"]) == "ray-raylet"
    assert cpu_profile.role(["/x/ray/core/src/ray/gcs/gcs_server"]) == "ray-gcs"
    assert cpu_profile.role(["bash"]) == "other"


def test_spent_counts_new_processes_from_zero_and_sums_by_role():
    s = cpu_profile.ProcSample
    before = {1: s("a", 1, "ray-raylet", 10.0, 5, (0, 1)), 2: s("a", 2, "vllm-tp-worker", 3.0, 4, (0,))}
    after = {1: s("a", 1, "ray-raylet", 10.5, 5, (0, 1)), 2: s("a", 2, "vllm-tp-worker", 9.0, 4, (0,)),
             3: s("b", 3, "vllm-tp-worker", 2.0, 4, (1,))}
    assert cpu_profile.spent(before, after) == {"a": {"ray-raylet": 0.5, "vllm-tp-worker": 6.0, "total": 6.5},
                                                "b": {"vllm-tp-worker": 2.0, "total": 2.0}}


def test_a_process_that_ended_between_snapshots_is_added_with_its_own_seconds():
    base = {"a": {"ray-raylet": 0.5, "total": 0.5}}
    assert cpu_profile.with_process(base, "b", "bench-client", 3.0) == {
        "a": {"ray-raylet": 0.5, "total": 0.5}, "b": {"bench-client": 3.0, "total": 3.0}}
    assert cpu_profile.with_process(base, "a", "bench-client", 1.0)["a"] == {
        "ray-raylet": 0.5, "bench-client": 1.0, "total": 1.5}
    assert base == {"a": {"ray-raylet": 0.5, "total": 0.5}}  # not changed in place


def test_a_level_keeps_its_median_run_and_every_runs_figure():
    from benchmarks.side_by_side import median_level

    runs = [{"output_tok_s": 2000.0, "ttft_p50_ms": 40.0}, {"output_tok_s": 1300.0, "ttft_p50_ms": 70.0},
            {"output_tok_s": 1900.0, "ttft_p50_ms": 45.0}]
    chosen = median_level(runs)
    assert chosen["output_tok_s"] == 1900.0 and chosen["ttft_p50_ms"] == 45.0  # one real run, not a mix
    assert chosen["runs_output_tok_s"] == [2000.0, 1300.0, 1900.0]
    assert "runs_output_tok_s" not in runs[2]


def test_restart_rows_and_goals():
    warm, rec = spread([0.5, 0.7]), spread([0.45, 0.55])
    ratios = {"warm_restart": warm, "recovery": rec}
    g = goals(ratios, None)
    assert g["warm_restart"] == {"goal": "<= 0.6", "median": 0.6, "met": True}
    assert g["recovery"]["goal"] == "<= 0.5" and g["recovery"]["met"] is True
    table = markdown({"ratios": ratios, "goals": g})
    assert "| second start on warm compile caches / first start (spark-vllm alone) | 0.60 (0.50 to 0.70, n=2) " \
           "| lower | <= 0.6 | yes |" in table


def test_vllm_phases_read_from_its_log_lines():
    from benchmarks.restarts import vllm_phases

    log = "\n".join([
        "(RayWorkerProc pid=5, ip=192.168.100.11) INFO 12-02 04:46:34 [cpu_model_runner.py:87] "
        "Warming up model for the compilation...",
        "(RayWorkerProc pid=4) INFO 12-02 04:46:35 [cpu_model_runner.py:87] Warming up model for the compilation...",
        "(RayWorkerProc pid=4) WARNING 12-02 04:46:42 [decorators.py:333] [backbone] Compiling model again due "
        "to a load failure from /c/rank_0_0/model, reason: 'function' object has no attribute 'finalize_loading'",
        "(RayWorkerProc pid=4) INFO 12-02 04:46:53 [decorators.py:743] [backbone] saved AOT compiled function to /c",
        "(RayWorkerProc pid=4) INFO 12-02 04:46:53 [cpu_worker.py:90] Warming up done.",
        "(RayWorkerProc pid=5, ip=192.168.100.11) INFO 12-02 04:46:55 [decorators.py:743] saved AOT compiled "
        "function to /d",
        "(RayWorkerProc pid=5, ip=192.168.100.11) INFO 12-02 04:46:55 [cpu_worker.py:90] Warming up done.",
        "(EngineCore pid=3) INFO 12-02 04:46:58 [core.py:403] init engine (profile, create kv cache, warmup model) "
        "took 24.31 s",
    ])
    got = vllm_phases(log)
    assert got == {"compile_s": 21.0, "init_engine_s": 24.31, "cache_loaded": 0, "load_failures": 1,
                   "load_failure_reason": "'function' object has no attribute 'finalize_loading'"}
    assert vllm_phases("")["compile_s"] is None
