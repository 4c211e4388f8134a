"""The environment, read once into a value.

Flags fall back to these `SPARK_VLLM_*` variables; precedence is always
flag > variable > built-in default. Nothing else in the package reads
`SPARK_VLLM_*` from `os.environ`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

TRUE_WORDS = {"1", "true", "yes", "on"}


def env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_WORDS


@dataclass(frozen=True)
class Settings:
    iface: str | None = None  # SPARK_VLLM_IFACE
    head_ip: str | None = None  # SPARK_VLLM_HEAD_IP
    node_ip: str | None = None  # SPARK_VLLM_NODE_IP
    sysfs_root: str = "/sys"  # SPARK_VLLM_SYSFS_ROOT
    simulate: bool = False  # SPARK_VLLM_SIMULATE=1
    token_file: str | None = None  # SPARK_VLLM_TOKEN_FILE
    model: str | None = None  # SPARK_VLLM_MODEL (serve's MODEL)
    gpu_memory: str | None = None  # SPARK_VLLM_GPU_MEMORY, e.g. 128G
    no_auth: bool = False  # SPARK_VLLM_NO_AUTH=1
    log_format: str = "text"  # SPARK_VLLM_LOG_FORMAT
    log_dir: str | None = None  # SPARK_VLLM_LOG_DIR
    serving: bool = False  # SPARK_VLLM_SERVING=1: set by `serve` for vLLM's processes (serve.vllm_plugin)
    image_digest: str | None = None  # SPARK_VLLM_IMAGE_DIGEST: this container's image (a recipe's lock)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Settings":
        return cls(
            iface=environ.get("SPARK_VLLM_IFACE") or None,
            head_ip=environ.get("SPARK_VLLM_HEAD_IP") or None,
            node_ip=environ.get("SPARK_VLLM_NODE_IP") or None,
            sysfs_root=environ.get("SPARK_VLLM_SYSFS_ROOT") or "/sys",
            simulate=env_flag(environ.get("SPARK_VLLM_SIMULATE")),
            token_file=environ.get("SPARK_VLLM_TOKEN_FILE") or None,
            model=environ.get("SPARK_VLLM_MODEL") or None,
            gpu_memory=environ.get("SPARK_VLLM_GPU_MEMORY") or None,
            no_auth=env_flag(environ.get("SPARK_VLLM_NO_AUTH")),
            log_format=environ.get("SPARK_VLLM_LOG_FORMAT") or "text",
            log_dir=environ.get("SPARK_VLLM_LOG_DIR") or None,
            serving=env_flag(environ.get("SPARK_VLLM_SERVING")),
            image_digest=environ.get("SPARK_VLLM_IMAGE_DIGEST") or None,
        )

    def sources(self, chosen: Mapping[str, object]) -> list[tuple[str, object, str]]:
        """Pure: (name, value, "flag" | "env" | "default") for each chosen setting, for the
        start summary. A value equal to the variable's is reported as coming from it."""
        out = []
        for name, value in chosen.items():
            env = getattr(self, name, None)
            source = "default" if value in (None, False) else "env" if value == env else "flag"
            out.append((name, value, source))
        return out
