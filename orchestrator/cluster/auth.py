"""Ray token authentication: which variables to set, and the token file.

Token mode is on when a token is given (`--token-file`, `RAY_AUTH_TOKEN`,
`RAY_AUTH_TOKEN_PATH`) or `RAY_AUTH_MODE=token` is set; otherwise spark-vllm sets
`RAY_AUTH_MODE=disabled` explicitly, so a stray `~/.ray/auth_token` on one Spark
cannot switch that node alone into token mode. Tokens are never logged.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import UsageError


@dataclass(frozen=True)
class AuthPlan:
    enabled: bool
    token_file: str | None
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.enabled:
            return "Ray token authentication off"
        return f"Ray token authentication on (token in {self.token_file or 'RAY_AUTH_TOKEN'})"


def plan_auth(environ: Mapping[str, str], token_file: str | None) -> AuthPlan:
    """Pure: the auth variables for this node."""
    mode = (environ.get("RAY_AUTH_MODE") or "").lower()
    path = token_file or environ.get("RAY_AUTH_TOKEN_PATH")
    wanted = mode == "token" or bool(path) or bool(environ.get("RAY_AUTH_TOKEN"))
    if mode and mode != "token" and (token_file or environ.get("RAY_AUTH_TOKEN")):
        raise UsageError(f"RAY_AUTH_MODE={mode} conflicts with the token given",
                         "unset RAY_AUTH_MODE or drop --token-file")
    if not wanted:
        return AuthPlan(False, None, {"RAY_AUTH_MODE": mode or "disabled"})
    env = {"RAY_AUTH_MODE": "token"}
    if path:
        env["RAY_AUTH_TOKEN_PATH"] = str(Path(path).expanduser())
    return AuthPlan(True, env.get("RAY_AUTH_TOKEN_PATH"), env)


def ensure_token(plan: AuthPlan, create: bool, environ: Mapping[str, str]) -> bool:
    """Make sure the token exists. The head creates a missing token file (mode 0600);
    a worker must be given one. Returns True when a token file was created."""
    if not plan.enabled or environ.get("RAY_AUTH_TOKEN"):
        return False
    if plan.token_file is None:
        raise UsageError("RAY_AUTH_MODE=token but no token given",
                         "pass --token-file (copy the head's token file to this machine)")
    path = Path(plan.token_file)
    if path.is_file() and path.read_text().strip():
        return False
    if not create:
        raise UsageError(f"token file {path} is missing or empty",
                         "copy the head's token file here, e.g. with scp, and pass --token-file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return True
