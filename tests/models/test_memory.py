"""The memory fit, as plain arithmetic, with the playbook's models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from orchestrator.errors import ModelDoesNotFit, UsageError
from orchestrator.models.matrix import load_matrix
from orchestrator.models.memory import (GiB, SPARK_MEMORY, FitRequest, budget_basis, check_fit, fit_request, local_weights_bytes,
                                        parse_size, plan_fit, shape_from_config)
from orchestrator.models.probe import parse_meminfo, parse_nvidia_smi
from orchestrator.serve import engine
from orchestrator.serve.compat import load_vllm_api

# Llama 3.1 405B's config.json (the fields the KV cache depends on)
LLAMA_405B = {"num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8,
              "hidden_size": 16384, "torch_dtype": "float16", "max_position_embeddings": 131072}
LLAMA_70B = {"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
             "hidden_size": 8192, "torch_dtype": "bfloat16", "max_position_embeddings": 131072}
AWQ_405B_BYTES = 203 * GiB  # its model card


def request(weights, config, max_len, nodes, util=0.9, **kw):
    shape = shape_from_config(config)
    return FitRequest(weights=weights, kv_per_token=shape.kv_bytes_per_token(), max_model_len=max_len,
                      gpu_memory=SPARK_MEMORY, utilization=util, tensor=nodes, pipeline=1, **kw)


def test_parse_size():
    assert parse_size("128G") == 128 * 10**9
    assert parse_size("119.5GiB") == int(119.5 * GiB)
    assert parse_size("500m") == 500 * 10**6
    assert parse_size("1024") == 1024
    with pytest.raises(UsageError):
        parse_size("lots")


def test_kv_bytes_per_token_from_config():
    assert shape_from_config(LLAMA_405B).kv_bytes_per_token() == 2 * 126 * 8 * 128 * 2
    assert shape_from_config(LLAMA_70B).kv_bytes_per_token(kv_dtype_bytes=1) == 2 * 80 * 8 * 128
    nested = shape_from_config({"text_config": LLAMA_70B, "torch_dtype": "bfloat16"})
    assert (nested.layers, nested.kv_heads, nested.head_dim) == (80, 8, 128)


def test_405b_with_the_playbooks_preset_fits_two_sparks_but_tight():
    report = check_fit(plan_fit(request(AWQ_405B_BYTES, LLAMA_405B, 256, nodes=2, util=1.0)), "405b")
    assert report.fits and report.tight
    assert report.budget == SPARK_MEMORY - 8 * GiB  # utilization 1.0: the host's share is what limits


def test_405b_at_its_full_context_is_refused_with_the_numbers():
    report = plan_fit(request(AWQ_405B_BYTES, LLAMA_405B, 131072, nodes=2))
    assert not report.fits
    with pytest.raises(ModelDoesNotFit, match=r"weights 101\.5 GiB \+ KV cache 31\.5 GiB .* of 107\.3 GiB usable"):
        check_fit(report, "405b")


def test_70b_bf16_needs_two_sparks():
    weights = int(141.1e9)
    assert not plan_fit(request(weights, LLAMA_70B, 2048, nodes=1)).fits
    two = plan_fit(request(weights, LLAMA_70B, 2048, nodes=2))
    assert two.fits and not two.tight


def test_kv_cache_bytes_replace_the_floor_and_the_utilization():
    r = request(10 * GiB, LLAMA_70B, 131072, nodes=1, util=0.1, kv_cache_bytes=GiB)
    report = plan_fit(r)
    assert report.kv == GiB and report.budget == SPARK_MEMORY - 8 * GiB and report.fits


@pytest.mark.parametrize("entry", load_matrix().models, ids=lambda e: e.handle)
def test_matrix_sparks_column_agrees_with_the_fit(entry):
    """Weights alone: a one-Spark row fits one Spark; a two-Spark row fits two but not one."""
    def fits(nodes):
        return plan_fit(FitRequest(int(entry.size_gb * 1e9), 0, 0, SPARK_MEMORY, 0.9, nodes, 1)).fits
    assert fits(entry.nodes)
    assert entry.nodes == 1 or not fits(entry.nodes - 1)


def test_local_weights_from_safetensors_headers(tmp_path):
    save_file({"a": torch.zeros(10, 10, dtype=torch.bfloat16), "b": torch.zeros(3, dtype=torch.float32)},
              tmp_path / "model-00001-of-00002.safetensors")
    save_file({"c": torch.zeros(4, 4, dtype=torch.float8_e4m3fn)}, tmp_path / "model-00002-of-00002.safetensors")
    assert local_weights_bytes(tmp_path) == 200 + 12 + 16


def test_fit_request_from_vllms_parsed_flags():
    """The 405B preset as vLLM's real parser reads it, through fit_request, is the tight fit."""
    api = load_vllm_api()
    preset = load_matrix().find("hugging-quants/Meta-Llama-3.1-405B-Instruct-AWQ-INT4").preset
    args = engine.parse_flags(engine.serve_parser(api), "m", list(preset))
    r = fit_request(AWQ_405B_BYTES, LLAMA_405B, args, 2, 1, SPARK_MEMORY, unified=True)
    assert (r.max_model_len, r.utilization, r.kv_cache_bytes) == (256, 1.0, None)
    assert plan_fit(r).tight
    plain = fit_request(AWQ_405B_BYTES, LLAMA_405B, engine.parse_flags(engine.serve_parser(api), "m",
                                                                       ["--kv-cache-dtype", "fp8"]), 2, 1,
                        SPARK_MEMORY, unified=True)
    default = engine.parse_flags(engine.serve_parser(api), "m", []).gpu_memory_utilization  # 0.92 in 0.32
    assert (plain.max_model_len, plain.utilization) == (131072, default)  # the model's own context, vLLM's default
    assert plain.kv_per_token == 2 * 126 * 8 * 128


def test_probe_parsers():
    assert parse_nvidia_smi("81559\n81559\n") == 81559 << 20
    assert parse_nvidia_smi("[N/A]\n") is None  # a Spark: unified memory
    assert parse_meminfo("MemTotal:       130653580 kB\nMemFree: 1 kB\n") == 130653580 * 1024


def test_budget_basis_says_how_memory_was_counted():
    spark = request(GiB, LLAMA_70B, 2048, nodes=2)
    assert budget_basis(spark) == ("the smaller of 119.2 GiB of unified memory x 0.9 (--gpu-memory-utilization) "
                                   "and 119.2 GiB of unified memory less the host's 8.0 GiB")
    discrete = FitRequest(GiB, 0, 0, 80 * GiB, 0.9, 1, 1, unified=False)
    assert budget_basis(discrete) == "80.0 GiB GPU memory x 0.9 (--gpu-memory-utilization)"
    assert "--kv-cache-memory-bytes replaces" in budget_basis(request(GiB, LLAMA_70B, 1, 1, kv_cache_bytes=GiB))
