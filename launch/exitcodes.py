"""The one table from error families to exit codes (documented in the README)."""

from __future__ import annotations

from orchestrator import errors

# First match wins: subclasses before their families. Documented in the README.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (errors.Stopped, 0),
    (errors.BadServeFlags, 2),
    (errors.UsageError, 2),
    (errors.LockDrift, 20),
    (errors.CopyNotVerified, 21),
    (errors.DiscoveryError, 3),
    (errors.HeadUnreachable, 4),
    (errors.WrongSubnet, 4),
    (errors.ClusterIncomplete, 5),
    (errors.VersionSkew, 6),
    (errors.NodeLost, 7),
    (errors.FabricTestFailed, 15),
    (errors.UnsupportedRay, 17),
    (errors.FabricRefused, 19),
    (errors.ClusterError, 4),
    (errors.NotEnoughGpus, 8),
    (errors.ModelNotFound, 9),
    (errors.ModelDoesNotFit, 12),
    (errors.HubError, 13),
    (errors.EngineWedged, 18),
    (errors.ServeError, 10),
    (errors.SimulationError, 11),
    (errors.PreflightFailed, 14),
    (errors.ContainerError, 16),
    (errors.SparkVllmError, 1),
]



def exit_code_for(exc: BaseException) -> int:
    return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 1)
