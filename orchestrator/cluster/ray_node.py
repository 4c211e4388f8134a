"""This machine's Ray node, started or joined through Ray's own Python code (what
`ray start --head/--address --block` runs), and this process as a Ray driver.

The communication plan must already be applied to `os.environ`: the raylet and
every Ray worker on this node inherit the environment of this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Mapping

from ..errors import ClusterError
from . import raycompat
from .nodes import ClusterState, parse_nodes

log = logging.getLogger("spark_vllm")

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterOptions:
    node_ip: str
    head_ip: str  # equals node_ip on the head
    port: int = DEFAULT_PORT
    num_gpus: int | None = None  # None: Ray detects them
    num_cpus: int | None = None
    simulate: bool = False
    dashboard_host: str | None = None  # None: the head's fabric address
    nodes: int = 2
    wait_timeout: float = 600.0
    join_timeout: float = 120.0
    allow_version_skew: bool = False
    temp_dir: str | None = None
    # The driver's Ray job environment (a recipe's env, HF_HUB_OFFLINE): Ray gives it to every
    # worker process of the job on every node, so a node started by plain `spark-vllm worker` gets it.
    job_env: tuple[tuple[str, str], ...] = ()

    @property
    def head(self) -> bool:
        return self.node_ip == self.head_ip

    @property
    def gcs_address(self) -> str:
        return f"{self.head_ip}:{self.port}"


# How fast the head's GCS declares a node dead (Ray's defaults: every 3 s, 10 s to
# answer, 5 misses, so 20 to 55 s). A lost node must be gone from Ray's table before
# vLLM's engine restarts, or its placement group may pick the dead node's GPU. A killed
# node is then dead after about 5 s, an unreachable one after about 15 s (2 s to
# answer leaves a busy raylet room). A RAY_health_check_* variable set by the user wins.
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                "health_check_failure_threshold": 5}


def health_check_config(environ: Mapping[str, str]) -> dict:
    """Pure: the head's GCS health-check settings not already set as RAY_ variables."""
    return {k: v for k, v in HEALTH_CHECK.items() if f"RAY_{k}" not in environ}


def ray_params(opts: ClusterOptions, environ: Mapping[str, str] | None = None) -> dict:
    """Pure: the RayParams of this node."""
    params = dict(
        node_ip_address=opts.node_ip,
        num_gpus=1 if opts.simulate and opts.num_gpus is None else opts.num_gpus,
        num_cpus=opts.num_cpus,
        temp_dir=opts.temp_dir,
    )
    if opts.simulate:
        # Two simulated Sparks share one machine's memory: keep Ray's object store small.
        params["object_store_memory"] = 256 * 1024 * 1024
    if opts.head:
        params.update(gcs_server_port=opts.port,
                      dashboard_host=opts.dashboard_host or opts.node_ip,
                      _system_config=health_check_config(environ or {}) or None)
    else:
        params.update(gcs_address=opts.gcs_address)
    return {k: v for k, v in params.items() if v is not None}


def this_node_gpus(opts: ClusterOptions) -> int:
    """The GPUs this node will give Ray: the flag, one in the simulation, else what
    Ray's own detection finds (NVML, within CUDA_VISIBLE_DEVICES)."""
    if opts.num_gpus is not None:
        return opts.num_gpus
    if opts.simulate:
        return 1
    from ray._private.accelerators import get_accelerator_manager_for_resource

    gpus = get_accelerator_manager_for_resource("GPU")
    found = gpus.get_current_node_num_accelerators()
    visible = gpus.get_current_process_visible_accelerator_ids()
    return found if visible is None else min(found, len(visible))


def attach_address(environ) -> str | None:
    """Inside `ray job submit`, or with RAY_ADDRESS set, use that cluster: start nothing."""
    if environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return environ.get("RAY_ADDRESS") or "auto"
    return environ.get("RAY_ADDRESS") or None


AUTH_HINT = ("Ray token authentication is on: give this machine a copy of the head's token file "
             "(default ~/.ray/auth_token, or --token-file PATH), and run every Spark with or without --no-auth alike")


def _auth_refused(exc: BaseException) -> bool:
    """Ray reports a refused token as a RuntimeError whose text holds the traceback of
    an AuthenticationError (sometimes chained under a ConnectionError)."""
    return any("InvalidAuthToken" in str(e) for e in (exc, exc.__cause__) if e is not None)


def loaded_auth_mismatch(wanted: str | None, loaded: str) -> bool:
    """Pure: whether the token mode Ray's core library took when it loaded in this
    process (`loaded`: "token" or "disabled") differs from the planned RAY_AUTH_MODE.
    Ray's C++ core reads its RAY_* settings once, when `ray._raylet` is first imported
    (vLLM's CUDA build imports it at its own import): a mode changed afterwards reaches
    the daemons this process starts but not this process's own GCS client. Nothing
    planned (`wanted` None): Ray's own default stands, no mismatch."""
    return wanted is not None and wanted.lower() != loaded


def sync_loaded_auth(environ: Mapping[str, str]) -> None:
    """Make this process's Ray core take the planned token settings: when it loaded
    before they were set (vLLM's CUDA build imports Ray at its own import), re-read
    them as Ray itself does when it turns token auth on (`Config.initialize`, then a
    fresh token cache). Without it the head's own GCS client goes without the token
    its GCS requires, and the start fails with InvalidAuthToken."""
    from ray._private.authentication.authentication_utils import get_authentication_mode_name
    from ray._raylet import AuthenticationTokenLoader, Config, get_authentication_mode

    if loaded_auth_mismatch(environ.get("RAY_AUTH_MODE"), get_authentication_mode_name(get_authentication_mode())):
        log.debug("Ray loaded before its token settings were applied; re-reading them")
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    loaded = get_authentication_mode_name(get_authentication_mode())
    if loaded_auth_mismatch(environ.get("RAY_AUTH_MODE"), loaded):
        raise ClusterError(f"Ray's token authentication is {loaded} in this process although "
                           f"RAY_AUTH_MODE={environ.get('RAY_AUTH_MODE')}",
                           "set RAY_AUTH_MODE before starting spark-vllm, or pass --no-auth on every Spark")


def is_ray_daemon(cmdline: list[str]) -> bool:
    """Pure: a process Ray's node starts (gcs_server, raylet, dashboard, its agents,
    log monitor, reaper): its program lives in Ray's package."""
    return any("/ray/" in part or part in ("gcs_server", "raylet") for part in cmdline[:3])


def descendants() -> dict[int, "psutil.Process"]:
    import psutil

    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def terminate_all(procs: list, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds, to those of `procs` still running."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def new_ray_daemons(before: set[int]) -> list:
    """This process's descendants started since `before` (pids) that are Ray's."""
    import psutil

    found = []
    for pid, p in descendants().items():
        with contextlib.suppress(psutil.Error):
            if pid not in before and is_ray_daemon(p.cmdline()):
                found.append(p)
    return found


class RayNode:
    """This machine's Ray processes (GCS and dashboard on the head, raylet everywhere)."""

    def __init__(self, opts: ClusterOptions) -> None:
        raycompat.require_ray()  # before Ray is imported
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # else `ray start` asks and waits 10 s
        sync_loaded_auth(os.environ)
        raycompat.ensure_token_file()
        self.opts = opts
        try:
            self._node = start_node(opts)
        except Exception as exc:  # Ray raises bare Exceptions/ConnectionErrors here
            if _auth_refused(exc):
                raise ClusterError(f"the head {opts.gcs_address} refused this node's Ray auth token",
                                   AUTH_HINT) from exc
            raise ClusterError(f"Ray could not start on {opts.node_ip}: {exc}",
                               "see the Ray logs under /tmp/ray/session_latest/logs") from exc
        from ray._private.utils import write_ray_address

        self.address = self._node.gcs_address
        write_ray_address(self.address, opts.temp_dir)  # so `ray status` works as before

    def dead_processes(self) -> list[str]:
        return [name for name, _ in self._node.dead_processes()]

    def stop(self, grace: float = 5.0) -> None:
        """Stop Ray's processes, then any descendant they left behind (the raylet's
        dashboard and runtime-env agents outlive it otherwise)."""
        before = list(descendants().values())
        self._node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        terminate_all(before, grace)


def start_node(opts: ClusterOptions):
    """Ray's Node for `opts` (what `ray start` runs). When its start fails, whatever it
    had started (a head's GCS, the reaper, a raylet) is stopped before the error goes
    on: a failed start leaves no Ray daemon behind."""
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    before = set(descendants())
    started: list = []

    class QuietNode(Node):
        def __init__(self, *args, **kwargs) -> None:
            started.append(self)  # Ray's Node records what it starts in self.all_processes
            super().__init__(*args, **kwargs)

        def check_version_info(self) -> None:
            """Ray's own check names a joining node by probing 8.8.8.8, which warns
            "Failed to determine local IP via external connectivity" on every worker
            start (a Spark's fabric has no route out); name it by its given address."""
            from ray._common.usage.usage_lib import get_cluster_metadata
            from ray._private.utils import check_version_info

            cluster = get_cluster_metadata(self.get_gcs_client())
            if cluster:
                check_version_info(cluster, f"node {self._node_ip_address}")

    try:
        return QuietNode(RayParams(**ray_params(opts, os.environ)), head=opts.head,
                         shutdown_at_exit=False, spawn_reaper=True)
    except BaseException:
        if started and getattr(started[0], "all_processes", None):
            with contextlib.suppress(Exception):
                started[0].kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
        terminate_all(new_ray_daemons(before))  # what Ray's own record missed (its agents)
        raise


def connect_driver(address: str, node_ip: str | None = None, quiet: bool = False,
                   env: tuple[tuple[str, str], ...] = ()) -> None:
    """Connect this process to the cluster as a Ray driver (vLLM reuses the connection);
    `env`: set in every worker process of this job, on every node (Ray's runtime env)."""
    raycompat.require_ray()  # before Ray is imported
    import ray

    if not ray.is_initialized():
        # ray.init replaces the SIGTERM handler with `sys.exit(15)` (and its C++ core
        # worker chains a stack dump in front): put back the caller's, so a stopped
        # head still tears its node down and exits 0.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(address=address, _node_ip_address=node_ip, logging_level=logging.WARNING,
                     log_to_driver=not quiet, configure_logging=not quiet,
                     runtime_env={"env_vars": dict(env)} if env else None)
        except Exception as exc:
            if _auth_refused(exc):
                raise ClusterError(f"the Ray cluster at {address} refused this process's auth token",
                                   AUTH_HINT) from exc
            raise ClusterError(f"could not connect to the Ray cluster at {address}: {exc}") from exc
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def cluster_state(want: int) -> ClusterState:
    import ray

    return ClusterState(parse_nodes(ray.nodes()), want)
