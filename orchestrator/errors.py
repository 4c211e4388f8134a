"""The one exception tree of spark-vllm.

Every error says what went wrong and what to do next (`hint`). `launch.cli` maps
each family to a distinct exit code; nothing here prints or exits.
"""

from __future__ import annotations


class SparkVllmError(Exception):
    """Root of every error spark-vllm raises on purpose."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(SparkVllmError, ValueError):
    """A flag or a value given by the user is wrong."""


# --- discovery: which interface ------------------------------------------------
class DiscoveryError(SparkVllmError):
    """The fabric interface could not be chosen."""


class InterfaceNotFound(DiscoveryError, LookupError):
    pass


class InterfaceDown(DiscoveryError):
    pass


class InterfaceWithoutAddress(DiscoveryError):
    pass


class NoRdmaInterface(DiscoveryError):
    pass


# --- cluster: Ray ----------------------------------------------------------------
class ClusterError(SparkVllmError):
    """The Ray cluster could not be formed or was lost."""


class UnsupportedRay(ClusterError):
    """The installed Ray is missing or older than spark-vllm supports (checked before Ray
    is imported)."""


class HeadUnreachable(ClusterError, ConnectionError):
    pass


class WrongSubnet(ClusterError):
    pass


class ClusterIncomplete(ClusterError, TimeoutError):
    """Fewer GPU nodes than asked for joined before the deadline."""


class VersionSkew(ClusterError):
    pass


class NodeLost(ClusterError):
    """The head (seen from a worker) or a node (seen from the head) went away."""


class FabricTestFailed(ClusterError):
    """`fabric-test`: the all-reduce between the nodes did not run or gave a wrong sum."""


class FabricRefused(ClusterError):
    """`serve`'s fabric check: NCCL on sockets over a RoCE fabric, or the bus bandwidth
    below --min-fabric-gbps."""


# --- serving: vLLM ---------------------------------------------------------------
class ServeError(SparkVllmError):
    """vLLM could not be started or stopped serving."""


class BadServeFlags(ServeError, UsageError):
    pass


class NotEnoughGpus(ServeError):
    pass


class ModelNotFound(ServeError, FileNotFoundError):
    pass


class EngineFailed(ServeError):
    pass


class EngineWedged(ServeError):
    """The engine wedged (alive, generating nothing) more often than the restart budget
    (--max-restarts within --restart-window) allows."""


class ModelDoesNotFit(ServeError, MemoryError):
    """Weights plus the KV-cache floor exceed the GPUs' memory (checked before the engine)."""


# --- models: the Hugging Face Hub and the weights on each node ----------------------
class HubError(SparkVllmError):
    """The model's files could not be fetched (access, token, network, disk)."""


class GatedModel(HubError, PermissionError):
    pass


class BadToken(HubError, PermissionError):
    pass


class RepoNotFound(HubError, ModelNotFound):
    pass


class OfflineNotCached(HubError, ModelNotFound):
    pass


class NotEnoughDisk(HubError, OSError):
    pass


# --- recipes: the community's v1 format, pinned; offline copies --------------------
class RecipeError(UsageError):
    """A recipe file that cannot run: bad YAML, no `vllm serve` command, an unknown {param}."""


class LockDrift(SparkVllmError):
    """What would run differs from the recipe's lock (model revision, vLLM, Ray, torch, NCCL, image)."""


class CopyNotVerified(SparkVllmError):
    """--offline: a node's copy of the model is incomplete, differs from the head's, or is unreadable."""


class BenchFailed(ServeError):
    """The serving benchmark could not run against the server."""


# --- operations -------------------------------------------------------------------
class PreflightFailed(SparkVllmError):
    """`spark-vllm doctor` found a check failing."""


# --- the host launcher: Docker ---------------------------------------------------
class ContainerError(SparkVllmError):
    """Docker is missing, its daemon is down or unreachable, or a docker command failed."""


# --- simulation (demo, tests) ----------------------------------------------------
class SimulationError(SparkVllmError):
    """The simulated Sparks (namespaces, tiny model) could not be built."""


class Stopped(BaseException):
    """SIGTERM (e.g. `spark-vllm stop`, `docker stop`): a clean stop, exit 0.

    A BaseException, like KeyboardInterrupt, on purpose: raised by the signal handler
    wherever the main thread is, it must not be swallowed by an `except Exception`
    in vLLM's or Ray's startup code."""
