"""The host launcher: the `docker run` plan with plain data, and the Docker errors with
fake `docker` executables on PATH (this machine has a docker CLI but no engine)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launch.exitcodes import exit_code_for
from orchestrator import errors
from orchestrator.ops.deployment.caches import cache_env
from orchestrator.ops.deployment.container import GROUP_FIX, HostFacts, RunRequest, diagnose, digest_of, plan_run

from conftest import REPO, clean_env

SPARK = HostFacts(infiniband=True, hf_cache="/home/me/.cache/huggingface", ray_dir="/home/me/.ray",
                  secrets_set=("HF_TOKEN",), cache_dir="/home/me/.cache/spark-vllm/container")
CACHE_VARS = {"VLLM_CACHE_ROOT": "/root/.cache/spark-vllm/vllm", "TRITON_CACHE_DIR": "/root/.cache/spark-vllm/triton",
              "TORCHINDUCTOR_CACHE_DIR": "/root/.cache/spark-vllm/torchinductor",
              "FLASHINFER_WORKSPACE_BASE": "/root/.cache/spark-vllm/flashinfer"}


def pairs(argv: list[str]) -> set[tuple[str, str]]:
    return set(zip(argv, argv[1:]))


def test_head_plan_has_everything_multi_node_vllm_needs():
    argv = plan_run(RunRequest(None, False, serve_args=("Qwen/Qwen3-8B", "--max-model-len", "32768")), SPARK).argv()
    assert argv[:2] == ["docker", "run"]
    for flag in [("--gpus", "all"), ("--network", "host"), ("--ipc", "host"), ("--shm-size", "16g"),
                 ("--ulimit", "memlock=-1"), ("--ulimit", "stack=67108864"), ("--device", "/dev/infiniband"),
                 ("--cap-add", "IPC_LOCK"), ("--restart", "unless-stopped"), ("--name", "spark-vllm"),
                 ("-v", "/home/me/.cache/huggingface:/root/.cache/huggingface"),
                 ("-v", "/home/me/.ray:/root/.ray"), ("-e", "HF_TOKEN")]:
        assert flag in pairs(argv), flag
    assert "--init" in argv and "-d" in argv
    assert argv[-5:] == ["spark-vllm", "serve", "Qwen/Qwen3-8B", "--max-model-len", "32768"]


def test_cache_env_puts_every_cache_under_the_root():
    assert cache_env("/root/.cache/spark-vllm") == CACHE_VARS
    assert cache_env("/c/") == {k: v.replace("/root/.cache/spark-vllm", "/c") for k, v in CACHE_VARS.items()}


@pytest.mark.parametrize("worker", [False, True])
def test_compile_caches_are_mounted_from_one_host_folder(worker):
    argv = plan_run(RunRequest("192.168.100.10" if worker else None, worker), SPARK).argv()
    assert ("-v", "/home/me/.cache/spark-vllm/container:/root/.cache/spark-vllm") in pairs(argv)
    assert {(k, v) for k, v in CACHE_VARS.items()} <= {tuple(e.split("=", 1)) for f, e in pairs(argv) if f == "-e"}
    # Every cache variable points inside the mounted folder.
    assert all(v.startswith("/root/.cache/spark-vllm/") for v in CACHE_VARS.values())


def test_no_cache_dirs_mounts_and_sets_none():
    argv = plan_run(RunRequest(None, False, cache_dirs=False), SPARK).argv()
    assert not any("spark-vllm/container" in a or a.split("=")[0] in CACHE_VARS for a in argv)
    assert ("-v", "/home/me/.cache/huggingface:/root/.cache/huggingface") in pairs(argv)  # the rest stays
    no_folder = plan_run(RunRequest(None, False), HostFacts(infiniband=False, hf_cache="/c")).argv()
    assert not any(a.startswith("VLLM_CACHE_ROOT=") for a in no_folder)


def test_worker_plan_and_env_and_no_infiniband():
    host = HostFacts(infiniband=False, hf_cache="/c")
    plan = plan_run(RunRequest("192.168.100.10", True, image="img:1",
                               env=(("SPARK_VLLM_IFACE", "enp1s0f1np1"),)), host)
    argv = plan.argv()
    assert ("-e", "SPARK_VLLM_HEAD_IP=192.168.100.10") in pairs(argv)
    assert ("-e", "SPARK_VLLM_IFACE=enp1s0f1np1") in pairs(argv)
    assert "/dev/infiniband" not in argv and "IPC_LOCK" not in argv and "HF_TOKEN" not in argv
    assert argv[-2:] == ["img:1", "worker"]


def test_worker_without_head_ip_is_a_usage_error():
    with pytest.raises(errors.UsageError, match="--worker needs the head's address"):
        plan_run(RunRequest(None, True), SPARK)


@pytest.mark.parametrize("stderr, want", [
    ("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
     "Get ...: dial unix /var/run/docker.sock: connect: permission denied", GROUP_FIX),
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
     "sudo systemctl start docker"),
    ("something odd\nlast line", "docker does not work here: last line"),
])
def test_diagnose_names_the_fix(stderr, want):
    assert want in str(diagnose(stderr))


def container_cli(tmp_path, *args: str, docker: str | None, hf_token: str | None = None):
    """`spark-vllm container ...` with PATH holding only a fake docker (or none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if docker is not None:
        (bin_dir / "docker").write_text("#!/bin/sh\n" + docker)
        (bin_dir / "docker").chmod(0o755)
    env = clean_env(PATH=str(bin_dir), HOME=str(tmp_path))
    env.pop("HF_TOKEN", None)
    if hf_token:
        env["HF_TOKEN"] = hf_token
    return subprocess.run([sys.executable, "-m", "launch", "container", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


DOWN = 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. ' \
       'Is the docker daemon running?" >&2; exit 1\n'
DENIED = 'echo "permission denied while trying to connect to the Docker daemon socket at ' \
         'unix:///var/run/docker.sock: connect: permission denied" >&2; exit 1\n'


@pytest.mark.parametrize("docker, want", [
    (None, "spark-vllm: error: docker is not installed (no `docker` on PATH) "
           "(install Docker with the NVIDIA container toolkit, as DGX OS ships it)"),
    (DOWN, "spark-vllm: error: the Docker daemon is not running (start it: sudo systemctl start docker)"),
    (DENIED, f"spark-vllm: error: this user cannot reach the Docker daemon's socket (permission denied) "
             f"(add yourself to the docker group: {GROUP_FIX})"),
])
@pytest.mark.parametrize("action", [("run", "Qwen/Qwen3-8B"), ("stop",), ("status",)])
def test_docker_errors_are_one_line_with_the_fix(tmp_path, docker, want, action):
    r = container_cli(tmp_path, *action, docker=docker)
    assert r.returncode == exit_code_for(errors.ContainerError("")) == 16, r.stderr
    assert r.stderr.strip() == want


def test_run_calls_docker_with_the_plan_and_never_the_token(tmp_path):
    log = tmp_path / "calls"
    fake = f'printf "%s\\n" "$*" >> {log}\n[ "$1" = info ] && echo 28.2.2\nexit 0\n'
    r = container_cli(tmp_path, "run", "--worker", "192.168.100.10", docker=fake, hf_token="hf_secret_value")
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("info") and calls[1].startswith("image inspect ")
    assert calls[2].startswith("run -d --name spark-vllm --init")
    # the image is not here yet (inspect printed nothing): no digest to pass
    assert calls[2].endswith("-e SPARK_VLLM_HEAD_IP=192.168.100.10 -e HF_TOKEN spark-vllm worker")
    assert "hf_secret_value" not in log.read_text() + r.stdout + r.stderr
    # The caches' host folder is made by us before docker runs (not by Docker, as root).
    assert f"-v {os.fspath(tmp_path)}/.cache/spark-vllm/container:/root/.cache/spark-vllm" in calls[2]
    assert (tmp_path / ".cache" / "spark-vllm" / "container").is_dir()


def test_dry_run_prints_and_needs_no_docker(tmp_path):
    r = container_cli(tmp_path, "run", "--dry-run", "Qwen/Qwen3-8B", "--max-model-len", "32768", docker=None,
                      hf_token="hf_secret_value")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("docker run -d --name spark-vllm --init ")
    assert r.stdout.rstrip().endswith("-e HF_TOKEN spark-vllm serve Qwen/Qwen3-8B --max-model-len 32768")
    assert f"-v {os.fspath(tmp_path)}/.cache/huggingface:/root/.cache/huggingface" in r.stdout
    assert f"-v {os.fspath(tmp_path)}/.cache/spark-vllm/container:/root/.cache/spark-vllm" in r.stdout
    assert "-e VLLM_CACHE_ROOT=/root/.cache/spark-vllm/vllm" in r.stdout
    assert "hf_secret_value" not in r.stdout
    assert not (tmp_path / ".cache").exists()  # a dry run makes nothing


def test_dry_run_without_cache_dirs(tmp_path):
    r = container_cli(tmp_path, "run", "--dry-run", "--no-cache-dirs", "Qwen/Qwen3-8B", docker=None)
    assert r.returncode == 0, r.stderr
    assert "spark-vllm/container" not in r.stdout and "VLLM_CACHE_ROOT" not in r.stdout
    assert r.stdout.rstrip().endswith("spark-vllm serve Qwen/Qwen3-8B")


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("inspected, digest", [
    (f'["ghcr.io/me/spark-vllm@{DIGEST}","other.io/spark-vllm@{DIGEST}"] sha256:{"cd" * 32}\n',
     f"ghcr.io/me/spark-vllm@{DIGEST}"),  # pulled: the registry digest, what `docker pull` takes
    (f'[] sha256:{"cd" * 32}\n', f"sha256:{'cd' * 32}"),  # built here, never pushed: its ID
    (f'null sha256:{"cd" * 32}', f"sha256:{'cd' * 32}"),
    ("", None),
])
def test_the_digest_docker_reports(inspected, digest):
    assert digest_of(inspected) == digest


def test_run_passes_the_images_digest_into_the_container(tmp_path):
    """A container cannot read its own image's digest: `recipe lock` inside records what
    the host passed."""
    log = tmp_path / "calls"
    fake = (f'printf "%s\\n" "$*" >> {log}\n[ "$1" = info ] && echo 28.2.2\n'
            f'[ "$1" = image ] && [ "$2" = inspect ] && echo \'["ghcr.io/me/spark-vllm@{DIGEST}"] sha256:1\'\n'
            'exit 0\n')
    r = container_cli(tmp_path, "run", "--image", "ghcr.io/me/spark-vllm:latest", "Qwen/Qwen3-8B", docker=fake)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[1] == "image inspect --format {{json .RepoDigests}} {{.Id}} ghcr.io/me/spark-vllm:latest"
    assert f"-e SPARK_VLLM_IMAGE_DIGEST=ghcr.io/me/spark-vllm@{DIGEST} " in calls[2]


def test_a_digest_given_by_hand_wins_and_a_dry_run_asks_docker_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = clean_env(PATH=str(bin_dir), HOME=str(tmp_path), SPARK_VLLM_IMAGE_DIGEST=DIGEST)
    r = subprocess.run([sys.executable, "-m", "launch", "container", "run", "--dry-run", "Qwen/Qwen3-8B"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"-e SPARK_VLLM_IMAGE_DIGEST={DIGEST} " in r.stdout
    assert "SPARK_VLLM_IMAGE_DIGEST" not in container_cli(tmp_path, "run", "--dry-run", "m", docker=None).stdout
