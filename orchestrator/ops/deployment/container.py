"""The host launcher: the `docker run` command multi-node vLLM needs on a DGX Spark,
planned as a value (`plan_run`, pure), and the checks that Docker can be used.

Replaces the playbook's `run_cluster.sh`. The container runs under `--init` (Docker's
tini as PID 1): it forwards SIGTERM/SIGINT to spark-vllm and reaps the orphans Ray
leaves behind, so spark-vllm itself never has to be an init. The compile caches (vLLM's,
Triton's, inductor's, FlashInfer's) live in one host folder mounted into the container,
so a restart (the restart policy's too) loads what the first start compiled.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

from ...errors import ContainerError, UsageError
from .caches import cache_env

DEFAULT_IMAGE = "spark-vllm"
DEFAULT_NAME = "spark-vllm"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
# Ray's token file (token auth is on by default) lives in ~/.ray/auth_token: mounted, so
# the head's token reaches the host (to copy to the other Spark) and survives restarts.
RAY_DIR_IN_CONTAINER = "/root/.ray"
# The compile caches' host folder is mounted here, the cache variables pointing inside.
CACHE_IN_CONTAINER = "/root/.cache/spark-vllm"
# Passed by name only (`-e NAME`): docker copies the value from the caller's
# environment, so a secret never appears in the command line or in `--dry-run`.
SECRETS = ("HF_TOKEN", "RAY_AUTH_TOKEN")
# The image's digest, passed in: a container cannot read its own (a recipe's lock records it).
DIGEST_VAR = "SPARK_VLLM_IMAGE_DIGEST"
INSPECT_FORMAT = "{{json .RepoDigests}} {{.Id}}"
GROUP_FIX = "sudo usermod -aG docker $USER; newgrp docker"


@dataclass(frozen=True)
class HostFacts:
    """What the host has, read by `host_facts`; plain data for the plan."""

    infiniband: bool  # /dev/infiniband exists (RoCE verbs for NCCL)
    hf_cache: str  # the host's Hugging Face cache folder
    ray_dir: str = ""  # the host's ~/.ray (Ray's token file); "" to mount none
    cache_dir: str = ""  # the host folder for the compile caches; "" to mount none
    secrets_set: tuple[str, ...] = ()  # which of SECRETS are set (names only)


@dataclass(frozen=True)
class RunRequest:
    head_ip: str | None  # None on the head itself (--head) unless given
    worker: bool
    image: str = DEFAULT_IMAGE
    name: str = DEFAULT_NAME
    serve_args: tuple[str, ...] = ()  # MODEL and vLLM flags, as given
    env: tuple[tuple[str, str], ...] = ()  # SPARK_VLLM_* to pass on
    shm_size: str = "16g"
    restart: str = "unless-stopped"
    cache_dirs: bool = True  # mount the host's compile caches (--no-cache-dirs: off)


@dataclass(frozen=True)
class RunPlan:
    name: str
    image: str
    options: tuple[str, ...]
    command: tuple[str, ...]

    def argv(self) -> list[str]:
        return ["docker", "run", *self.options, self.image, *self.command]


def plan_run(req: RunRequest, host: HostFacts) -> RunPlan:
    """Pure: the `docker run` of one Spark."""
    if req.worker and not req.head_ip:
        raise UsageError("--worker needs the head's address", "e.g. --worker 192.168.100.10")
    opts = ["-d", "--name", req.name, "--init", "--restart", req.restart,
            "--gpus", "all", "--network", "host", "--ipc", "host", "--shm-size", req.shm_size,
            "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"]
    if host.infiniband:
        opts += ["--device", "/dev/infiniband", "--cap-add", "IPC_LOCK"]
    opts += ["-v", f"{host.hf_cache}:{HF_CACHE_IN_CONTAINER}"]
    if host.ray_dir:
        opts += ["-v", f"{host.ray_dir}:{RAY_DIR_IN_CONTAINER}"]
    if req.cache_dirs and host.cache_dir:
        opts += ["-v", f"{host.cache_dir}:{CACHE_IN_CONTAINER}"]
        for k, v in cache_env(CACHE_IN_CONTAINER).items():
            opts += ["-e", f"{k}={v}"]
    env = dict(req.env)
    if req.head_ip:
        env["SPARK_VLLM_HEAD_IP"] = req.head_ip
    for k, v in sorted(env.items()):
        opts += ["-e", f"{k}={v}"]
    for name in host.secrets_set:
        opts += ["-e", name]
    command = ("worker",) if req.worker else ("serve", *req.serve_args)
    return RunPlan(req.name, req.image, tuple(opts), command)


def digest_of(inspected: str) -> str | None:
    """Pure: the digest in `docker image inspect --format INSPECT_FORMAT`'s answer: the
    first registry digest (`REPO@sha256:...`, what `docker pull` takes), else the image
    ID (`sha256:...`) of an image built here and never pushed."""
    listed, _, image_id = inspected.strip().partition(" ")
    try:
        repo_digests = json.loads(listed or "null") or []
    except ValueError:
        repo_digests = []
    if repo_digests and isinstance(repo_digests, list):
        return str(repo_digests[0])
    return image_id.strip() or None


def image_digest(docker: str, image: str, timeout: float = 20.0) -> str | None:
    """The local image's digest; None when it is not here yet (`docker run` pulls it)."""
    try:
        r = subprocess.run([docker, "image", "inspect", "--format", INSPECT_FORMAT, image], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return digest_of(r.stdout) if r.returncode == 0 else None


def host_facts(environ: Mapping[str, str]) -> HostFacts:
    import os

    home = environ.get("HOME", "/root")
    cache = environ.get("HF_HOME") or f"{home}/.cache/huggingface"
    return HostFacts(os.path.isdir("/dev/infiniband"), cache, ray_dir=f"{home}/.ray",
                     secrets_set=tuple(s for s in SECRETS if environ.get(s)),
                     cache_dir=f"{home}/.cache/spark-vllm/container")


def diagnose(stderr: str) -> ContainerError:
    """Pure: `docker info`'s failure as one error with its fix."""
    text = stderr.strip()
    if "permission denied" in text.lower():
        return ContainerError("this user cannot reach the Docker daemon's socket (permission denied)",
                              f"add yourself to the docker group: {GROUP_FIX}")
    if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
        return ContainerError("the Docker daemon is not running",
                              "start it: sudo systemctl start docker")
    last = text.splitlines()[-1] if text else "no output"
    return ContainerError(f"docker does not work here: {last}", "check `docker info`")


def check_docker(timeout: float = 20.0) -> str:
    """The docker CLI's path, once `docker info` answers; else a ContainerError with the fix."""
    path = shutil.which("docker")
    if path is None:
        raise ContainerError("docker is not installed (no `docker` on PATH)",
                             "install Docker with the NVIDIA container toolkit, as DGX OS ships it")
    try:
        r = subprocess.run([path, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"`docker info` did not answer within {timeout:g} s",
                             "check the daemon: sudo systemctl status docker") from None
    if r.returncode != 0:
        raise diagnose(r.stderr)
    return path
