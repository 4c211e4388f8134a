"""One node's whole plan (network, auth, Ray options) and bringing it up.

`plan_node` is pure; `bring_up` applies the plan to the process environment,
checks the head (on a worker), and starts or joins Ray.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, MutableMapping

from .auth import OFF_WARNING, AuthPlan, ensure_token, plan_auth, share_hint
from .membership import check_head_subnet, wait_for_port
from .ray_node import ClusterOptions, RayNode
from .runstate import RunRecord
from ..net.discovery import Discovery
from ..errors import UsageError
from ..net.plan import NetworkPlan, plan_network

log = logging.getLogger("spark_vllm")

SIMULATE_VAR = "SPARK_VLLM_SIMULATE"
# `ray job stop` sends SIGTERM to every process of the job at once, then SIGKILL after
# this many seconds (Ray's default is 3). The job supervisor runs on the head and
# inherits the raylet's environment: 60 s covers serve's drain (--shutdown-timeout 30)
# and the teardown.
JOB_STOP_WAIT = {"RAY_JOB_STOP_WAIT_TIME_S": "60"}


@dataclass(frozen=True)
class NodeRequest:
    """What the user asked for, from flags and SPARK_VLLM_* variables."""

    head_ip: str | None = None  # None: this machine is the head
    iface: str | None = None
    node_ip: str | None = None  # None: the interface's address
    force: bool = False
    simulate: bool = False
    token_file: str | None = None
    no_auth: bool = False  # --no-auth: Ray token authentication off (warned)
    ray_env: Mapping[str, str] = field(default_factory=dict)  # e.g. Ray's log rotation
    cluster: ClusterOptions | None = None  # node_ip/head_ip filled in by plan_node


@dataclass(frozen=True)
class NodePlan:
    role: str  # "head" or "worker"
    network: NetworkPlan
    auth: AuthPlan
    cluster: ClusterOptions

    def environment(self) -> dict[str, str]:
        """Everything this node sets in its environment (values only; no secrets)."""
        return {**self.network.env.to_set(), **self.auth.env}


def plan_node(req: NodeRequest, discovery: Discovery, environ: Mapping[str, str]) -> NodePlan:
    extra = {**JOB_STOP_WAIT, **req.ray_env, **({SIMULATE_VAR: "1"} if req.simulate else {})}
    network = plan_network(discovery, environ, iface=req.iface, head_ip=req.head_ip,
                           force=req.force, extra=extra, node_ip=req.node_ip)
    base = req.cluster or ClusterOptions(node_ip="", head_ip="")
    if base.nodes < 1:
        raise UsageError(f"--nodes {base.nodes} must be at least 1")
    # The same command runs on every Spark: the one that owns --head-ip is the head.
    own = (network.node_ip,) if req.node_ip else network.choice.interface.addresses
    role = "head" if not network.head_ip or network.head_ip in own else "worker"
    if role == "worker":
        check_head_subnet(network.head_ip, network.choice.interface)
    node_ip = network.head_ip if role == "head" and network.head_ip else network.node_ip
    cluster = replace(base, node_ip=node_ip, head_ip=network.head_ip or node_ip,
                      simulate=req.simulate)
    return NodePlan(role, network, plan_auth(environ, req.token_file, req.no_auth), cluster)


def attached_request(req: NodeRequest, record: RunRecord | None) -> NodeRequest:
    """Pure: attached to a running cluster (`ray job submit`, RAY_ADDRESS), the network of
    the node that runs on this machine, from its run record (as `status` and `stop` read
    it), unless the user named one. Unchanged where no node runs (discovery then)."""
    if record is None or req.iface or req.head_ip:
        return req
    return replace(req, iface=record.iface, node_ip=req.node_ip or record.node_ip,
                   head_ip=record.gcs_address.rsplit(":", 1)[0], token_file=req.token_file or record.token_file)


def apply_environment(plan: NodePlan, environ: MutableMapping[str, str]) -> None:
    environ.update(plan.environment())


def prepare(plan: NodePlan, environ: MutableMapping[str, str] = os.environ) -> None:
    """Apply the plan's environment (network, Ray's token settings) and, on the head,
    make a missing token file. Before anything in this process imports Ray or vLLM:
    Ray's core reads its RAY_* settings once, when it loads."""
    for note in plan.network.env.notes:
        log.info(note)
    apply_environment(plan, environ)
    if not plan.auth.enabled:
        log.warning(OFF_WARNING)
    elif plan.role == "head" and ensure_token(plan.auth, create=True, environ=environ):
        log.info("created a Ray auth token in %s (mode 0600); on the other Sparks: %s",
                 plan.auth.token_file, share_hint(plan.auth.token_file))


def bring_up(plan: NodePlan, environ: MutableMapping[str, str] = os.environ, prepared: bool = False) -> RayNode:
    """Apply the environment (unless `prepared` did it already), then start (head) or
    join (worker) Ray."""
    if not prepared:
        prepare(plan, environ)
    c = plan.cluster
    log.info("this Spark is the %s: %s on %s (%s); %s", plan.role, c.node_ip,
             plan.network.choice.name, plan.network.choice.reason, plan.auth.describe())
    if plan.role == "worker":
        waited = wait_for_port(c.head_ip, c.port, c.join_timeout)
        # Only once the head answers: it writes the token before it listens, so where both
        # share a filesystem (the simulation) the same command started together works.
        ensure_token(plan.auth, create=False, environ=environ)
        log.info("head %s answers (after %.1f s); joining", c.gcs_address, waited)
    start = time.monotonic()
    node = RayNode(c)
    log.info("Ray %s started in %.1f s (GCS %s)", plan.role, time.monotonic() - start, node.address)
    return node
