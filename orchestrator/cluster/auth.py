"""Ray token authentication, on by default: which variables to set, and the token file.

Ray 2.60's GCS and raylet listen on every interface whatever address is asked, so
without a token anyone on the Spark's management LAN can join the cluster and run
code on it. spark-vllm therefore sets `RAY_AUTH_MODE=token` on every node unless told
not to (`--no-auth`, or `RAY_AUTH_MODE=disabled`), with the token in a file:
`--token-file`, else `RAY_AUTH_TOKEN_PATH`, else Ray's own default `~/.ray/auth_token`
(so `ray status` and `ray job submit` find it too). `RAY_AUTH_TOKEN` (the token
itself) also works. The head creates a missing file (mode 0600); the other Sparks
need a copy, which is the one step to share it. Tokens are never logged or printed.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import UsageError

DEFAULT_TOKEN_PATH = "~/.ray/auth_token"  # Ray's own default
OFF_WARNING = ("Ray token authentication is OFF: anyone who reaches this Spark's Ray ports (on every "
               "interface, the management LAN included) can join the cluster and run code on it")


@dataclass(frozen=True)
class AuthPlan:
    enabled: bool
    token_file: str | None  # None: off, or the token comes from RAY_AUTH_TOKEN
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.enabled:
            return "Ray token authentication off"
        return f"Ray token authentication on (token in {self.token_file or 'RAY_AUTH_TOKEN'})"

    def to_json(self) -> dict:
        """What may be shown: on/off and where the token lives, never the token."""
        return {"enabled": self.enabled, "token_file": self.token_file}


def plan_auth(environ: Mapping[str, str], token_file: str | None, no_auth: bool = False) -> AuthPlan:
    """Pure: the auth variables for this node. On unless `no_auth` or RAY_AUTH_MODE=disabled."""
    mode = (environ.get("RAY_AUTH_MODE") or "").lower()
    given = token_file or environ.get("RAY_AUTH_TOKEN")
    if no_auth and (given or mode == "token"):
        raise UsageError("--no-auth conflicts with the token given (--token-file, RAY_AUTH_TOKEN or "
                         "RAY_AUTH_MODE=token)", "drop one of them")
    if mode and mode not in ("token", "disabled"):
        raise UsageError(f"RAY_AUTH_MODE={mode} is not supported", "unset it (token is the default) or pass --no-auth")
    if no_auth or mode == "disabled":
        if given:
            raise UsageError("RAY_AUTH_MODE=disabled conflicts with the token given",
                             "unset RAY_AUTH_MODE or drop --token-file")
        return AuthPlan(False, None, {"RAY_AUTH_MODE": "disabled"})
    env = {"RAY_AUTH_MODE": "token"}
    if environ.get("RAY_AUTH_TOKEN") and not token_file:
        return AuthPlan(True, None, env)
    path = token_file or environ.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN_PATH
    env["RAY_AUTH_TOKEN_PATH"] = str(Path(path).expanduser())
    return AuthPlan(True, env["RAY_AUTH_TOKEN_PATH"], env)


def share_hint(path: str | None) -> str:
    """The one step that shares the token, and the way out."""
    where = path or DEFAULT_TOKEN_PATH
    return (f"copy the head's token file to {where} on this machine (e.g. `scp HEAD:{where} {where}`), "
            "or pass --token-file PATH / RAY_AUTH_TOKEN_PATH; or run every Spark with --no-auth")


def ensure_token(plan: AuthPlan, create: bool, environ: Mapping[str, str]) -> bool:
    """Make sure the token exists. The head creates a missing token file (mode 0600);
    a worker must be given one. Returns True when a token file was created."""
    if not plan.enabled or plan.token_file is None:  # off, or the token is in RAY_AUTH_TOKEN
        return False
    path = Path(plan.token_file)
    if path.is_file() and path.read_text().strip():
        return False
    if not create:
        raise UsageError(f"Ray token authentication is on and the token file {path} is missing or empty",
                         share_hint(plan.token_file))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return True
