"""A tiny random Llama, made locally, for the demo and the tests.

No network and no hub: the weights come from a fixed seed and the tokenizer is
a byte-level BPE trained on a few sentences. The shapes are the smallest vLLM's
CPU attention accepts (it rejects head_dim 16, so 2 heads of 64 over hidden
128). The text it generates is noise; what matters is that vLLM loads it,
shards it over tensor parallelism 2, and serves completions and chat, and that
its greedy tokens depend on every head (see `initializer_range`).

torch, transformers and tokenizers are imported only when a model is made.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import SimulationError
from .modeldir import build_once, is_complete, save_quietly  # noqa: F401 (is_complete: re-exported)

SEED = 0
VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
BOS, EOS, PAD = SPECIAL_TOKENS

# One line of Jinja: /v1/chat/completions needs a template.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Enough distinct words for the BPE trainer to reach VOCAB_SIZE.
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "Two DGX Spark machines serve one model with tensor parallelism.",
    "Ray forms the cluster; vLLM places one worker on every node.",
    "Pack my box with five dozen liquor jugs, then weigh the amber vase.",
    "How vexingly quick daft zebras jump while wizards box nightly!",
    "A network interface carries RDMA traffic at two hundred gigabits.",
    "Sphinx of black quartz, judge my vow; fjords glow crisply at dusk.",
    "Hello, world! Numbers: 0 1 2 3 4 5 6 7 8 9, 42, 2048, 3.14159.",
    "Completion requests stream tokens back over HTTP to the client.",
    "Jackdaws love my big sphinx of quartz and the quiet violet moon.",
    "Engines start, workers load weights, and the health check turns green.",
    "System, user and assistant messages are joined by the chat template.",
)


def make_tiny_model(path: str | os.PathLike[str]) -> Path:
    """Make the tiny model in directory `path` (created) and return `path`.

    Idempotent: a complete model already at `path` is returned as it is (see
    `modeldir.build_once`).

    Raises:
        SimulationError: `path` exists, is not empty and holds no complete
            model (it is never overwritten), or the build failed.
    """
    return build_once(path, _build, "tiny model")


def _build(out: Path) -> None:
    tokenizer = _train_tokenizer()
    model = _random_llama(len(tokenizer), tokenizer)
    save_quietly(out, tokenizer, model)


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    if bpe.get_vocab_size() != VOCAB_SIZE:
        raise SimulationError(
            f"the tiny tokenizer has {bpe.get_vocab_size()} tokens, "
            f"expected {VOCAB_SIZE}",
            hint="add sentences to TRAINING_TEXT in orchestrator/sim/models/tinymodel.py",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _random_llama(vocab_size: int, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Weights five times the usual 0.02: with tied embeddings at 0.02, the input
        # token's own embedding dominates and greedy decoding repeats the last token
        # whatever attention computes, so a wrong TP split would go unseen.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(SEED)
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()
