"""Memory fit: will the weights plus a KV-cache floor fit the cluster's GPUs?

Pure arithmetic over plain values, checked before the engine starts (vLLM itself
finds out minutes later, after loading, with a CUDA out-of-memory error).

How a DGX Spark is counted: its GPU has no memory of its own; the 128 GB of LPDDR5x
are one pool shared with the CPU, and CUDA reports that whole pool as the GPU's
memory. The OS, the container, Ray and vLLM's Python processes live in the same
pool, so a GPU's budget is the smaller of `total x --gpu-memory-utilization` (what
vLLM will try to take) and `total - HOST_RESERVE` (what the CPU side leaves).
With `--kv-cache-memory-bytes` vLLM ignores the utilization, and so does this check.

Per GPU, the need is: weights / (TP x PP) + KV cache + RUNTIME_OVERHEAD, where the
KV cache is the floor vLLM itself insists on (one whole `--max-model-len` sequence)
split over TP x PP, or `--kv-cache-memory-bytes` when given.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelDoesNotFit, UsageError

GiB = 1 << 30
SPARK_MEMORY = 128 * 10**9  # one DGX Spark's unified memory, as a simulated GPU's default too
HOST_RESERVE = 8 * GiB  # OS, container, Ray, vLLM's CPU-side processes, on a unified-memory GPU
RUNTIME_OVERHEAD = 2 * GiB  # CUDA context, activations, CUDA graphs, per GPU
TIGHT = 0.10  # warn when less than this share of the budget is left

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1,
               "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1}
SAFETENSORS_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                     "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1, "F4": 0.5, "F8_E8M0": 1}


def parse_size(text: str) -> int:
    """`128G`, `119.7GiB`, `500M`, `1024` -> bytes (G = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise UsageError(f"not a size: {text!r}", "e.g. 128G, 119GiB or 500M")
    number, unit, binary = m.groups()
    scale = (1024 if binary else 1000) ** ("kmgt".index(unit) + 1 if unit else 0)
    return int(float(number) * scale)


def fmt(n: float) -> str:
    """Bytes for people: GiB, MiB or KiB, one decimal."""
    for unit, size in (("GiB", GiB), ("MiB", 1 << 20)):
        if n >= size / 10:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache needs a token, from config.json."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    max_position: int | None

    def kv_bytes_per_token(self, kv_dtype_bytes: int | None = None) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * (kv_dtype_bytes or self.dtype_bytes)


def shape_from_config(config: dict) -> ModelShape:
    """config.json -> ModelShape; multimodal configs keep the language model in text_config."""
    c = config if "num_hidden_layers" in config else config.get("text_config") or config.get("llm_config") or config
    heads = int(c.get("num_attention_heads") or 1)
    dtype = str(c.get("torch_dtype") or c.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return ModelShape(
        layers=int(c.get("num_hidden_layers") or 0),
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or (int(c.get("hidden_size") or 0) // heads)),
        dtype_bytes=DTYPE_BYTES.get(dtype.replace("torch.", ""), 2),
        max_position=c.get("max_position_embeddings"),
    )


def safetensors_bytes(path: Path) -> int:
    """The tensor bytes a safetensors file holds, from its header alone (8-byte length + JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")


def local_weights_bytes(folder: Path) -> int:
    """Weights of a local model folder: safetensors headers, else the .bin/.pt files' sizes."""
    tensors = sorted(folder.glob("*.safetensors"))
    if tensors:
        return sum(safetensors_bytes(p) for p in tensors)
    return sum(p.stat().st_size for pattern in ("*.bin", "*.pt") for p in folder.glob(pattern))


@dataclass(frozen=True)
class FitRequest:
    weights: int  # bytes, the whole model
    kv_per_token: int  # bytes, the whole model
    max_model_len: int
    gpu_memory: int  # bytes, each GPU (the smallest, if they differ)
    utilization: float
    tensor: int
    pipeline: int
    kv_cache_bytes: int | None = None  # --kv-cache-memory-bytes (per GPU)
    unified: bool = True  # a Spark: the GPU's memory is the host's


@dataclass(frozen=True)
class FitReport:
    need: int  # per GPU
    budget: int  # per GPU
    weights: int  # per GPU
    kv: int  # per GPU
    overhead: int
    gpus: int

    @property
    def fits(self) -> bool:
        return self.need <= self.budget

    @property
    def tight(self) -> bool:
        return self.fits and self.budget - self.need < TIGHT * self.budget

    def describe(self) -> str:
        return (f"per GPU: weights {fmt(self.weights)} + KV cache {fmt(self.kv)} + runtime {fmt(self.overhead)}"
                f" = {fmt(self.need)} of {fmt(self.budget)} usable, over {self.gpus} GPU(s)")

    def to_json(self) -> dict:
        return {"fits": self.fits, "tight": self.tight, "need_bytes": self.need, "budget_bytes": self.budget,
                "weights_bytes": self.weights, "kv_bytes": self.kv, "overhead_bytes": self.overhead,
                "gpus": self.gpus}


def plan_fit(r: FitRequest) -> FitReport:
    """Pure: the per-GPU need against the per-GPU budget (see the module's docstring)."""
    split = max(1, r.tensor * r.pipeline)
    weights = -(-r.weights // split)
    kv = r.kv_cache_bytes if r.kv_cache_bytes is not None else -(-r.kv_per_token * r.max_model_len // split)
    reserve = HOST_RESERVE if r.unified else 0
    budget = r.gpu_memory - reserve if r.kv_cache_bytes is not None else min(
        int(r.gpu_memory * r.utilization), r.gpu_memory - reserve)
    return FitReport(weights + kv + RUNTIME_OVERHEAD, max(0, budget), weights, kv, RUNTIME_OVERHEAD, split)


def budget_basis(r: FitRequest) -> str:
    """Pure: how the per-GPU budget was counted, for the log."""
    memory = f"{fmt(r.gpu_memory)} {'of unified memory' if r.unified else 'GPU memory'}"
    host = f" less the host's {fmt(HOST_RESERVE)}" if r.unified else ""
    if r.kv_cache_bytes is not None:
        return f"{memory}{host}; --kv-cache-memory-bytes replaces --gpu-memory-utilization"
    return f"the smaller of {memory} x {r.utilization:g} (--gpu-memory-utilization) and {memory}{host}" if host \
        else f"{memory} x {r.utilization:g} (--gpu-memory-utilization)"


def check_fit(report: FitReport, model: str) -> FitReport:
    """Raise ModelDoesNotFit with the numbers; return the report when it fits (maybe tight)."""
    if not report.fits:
        raise ModelDoesNotFit(
            f"{model} does not fit: {report.describe()}",
            "lower --max-model-len, raise --gpu-memory-utilization, add Sparks (--nodes), "
            "or pick a smaller quantization (spark-vllm models)",
        )
    return report


DEFAULT_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization


def fit_request(weights: int, config: dict, args, tensor: int, pipeline: int, gpu_memory: int,
                unified: bool) -> FitRequest:
    """Pure: the request from vLLM's parsed flags (`args`) and the model's config.json.
    An unset --max-model-len is the model's own context (max_position_embeddings)."""
    shape = shape_from_config(config)
    kv_dtype = str(getattr(args, "kv_cache_dtype", None) or "auto")
    kv_bytes = 1 if kv_dtype.startswith("fp8") else None
    return FitRequest(
        weights=weights, kv_per_token=shape.kv_bytes_per_token(kv_bytes),
        max_model_len=int(getattr(args, "max_model_len", None) or shape.max_position or 0),
        gpu_memory=gpu_memory, utilization=float(getattr(args, "gpu_memory_utilization", None) or DEFAULT_UTILIZATION),
        tensor=tensor, pipeline=pipeline, kv_cache_bytes=getattr(args, "kv_cache_memory_bytes", None),
        unified=unified,
    )
