"""Which Ray spark-vllm supports, and every difference between the Ray versions it
meets, in one place.

NVIDIA's vLLM images ship different Rays (25.x images an older one, 26.05 on none):
the installed version is read from package metadata, before Ray is imported, and a
Ray below the minimum stops the command in one line naming the Ray it needs. Why
2.52: spark-vllm turns Ray's token authentication on by default, and Ray has it from
2.52 (`ray._private.authentication`); an older Ray cannot form a protected cluster.

Known differences that need no code: Ray 2.52 does not read
RAY_DISABLE_FAILURE_SIGNAL_HANDLER (2.53 on does), so a 2.52 driver stopped by SIGTERM
prints Ray's C++ stack dump; Ray 2.60's `ray start --head` turns token auth on by itself
when ~/.ray/auth_token exists (spark-vllm sets RAY_AUTH_MODE itself on every node).
The node API used in ray_node.py (`Node`, `RayParams`, `check_version_info`,
`get_cluster_metadata`, `write_ray_address`) is the same from 2.51 to 2.60.
"""

from __future__ import annotations

import re
from importlib import metadata

from ..errors import UnsupportedRay

MIN_RAY = (2, 52, 0)  # pyproject.toml's `ray>=2.52` (tests/cluster/test_raycompat.py holds them equal)


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


INSTALL = f"pip install 'ray[default]>={dotted(MIN_RAY[:2])}'"


def parse_version(text: str) -> tuple[int, int, int]:
    """Pure: "2.52.1" -> (2, 52, 1); pre-release and local tails are ignored
    ("2.53.0rc1", "2.60.0+nv25.11"), missing parts are 0. ValueError when it does not
    start with a number."""
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p or 0) for p in m.groups())  # type: ignore[return-value]


def check_ray(version: str | None) -> str:
    """Pure: `version` when spark-vllm supports that Ray, else UnsupportedRay (None: not
    installed)."""
    if version is None:
        raise UnsupportedRay(f"Ray is not installed; spark-vllm needs Ray {dotted(MIN_RAY[:2])} or newer",
                             INSTALL)
    try:
        supported = parse_version(version) >= MIN_RAY
    except ValueError:
        supported = False
    if not supported:
        raise UnsupportedRay(f"Ray {version} is installed; spark-vllm needs Ray {dotted(MIN_RAY[:2])} or newer "
                             "for its token authentication", INSTALL)
    return version


def installed_ray() -> str | None:
    """The installed Ray's version from its metadata (Ray is not imported)."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None


def require_ray() -> str:
    """Before Ray is imported: the installed Ray's version, or UnsupportedRay."""
    return check_ray(installed_ray())


def image_requirement(version: str | None) -> str:
    """Pure: what an image with Ray `version` installed (None: none) gets: its own Ray
    with the dashboard and Jobs API when supported, else the oldest supported one or
    newer."""
    try:
        check_ray(version)
    except UnsupportedRay:
        return f"ray[default]>={dotted(MIN_RAY)}"
    return f"ray[default]=={version}"


def ensure_token_file() -> None:
    """Ray's own check of the token settings (RAY_AUTH_MODE, the token file), as `ray
    start` runs it; it creates no token."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
