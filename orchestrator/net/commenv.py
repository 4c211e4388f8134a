"""The communication environment: the variables the playbook exports by hand.

`plan_environment` is a pure function of the chosen interface, the discovered
interfaces and the options; `apply_plan` writes the plan into an environment
mapping (the process's, before Ray and vLLM start, so the raylet and every Ray
worker on this node inherit it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, MutableMapping

from .discovery import Interface
from .roce import DeviceGid, GidPlan, pick, plan_gids
from .selection import Choice


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str  # the value that will be in force
    planned: str  # what spark-vllm would set
    source: str  # "spark-vllm", or "user" when a value already set wins
    why: str

    @property
    def overridden(self) -> bool:
        return self.source == "user" and self.value != self.planned


@dataclass(frozen=True)
class EnvPlan:
    variables: tuple[EnvVar, ...]
    notes: tuple[str, ...] = ()
    roce: tuple[DeviceGid, ...] = ()  # the GID chosen for each RoCE device in NCCL_IB_HCA

    def as_dict(self) -> dict[str, str]:
        return {v.name: v.value for v in self.variables}

    def to_set(self) -> dict[str, str]:
        """What apply_plan writes: only the variables spark-vllm sets itself."""
        return {v.name: v.value for v in self.variables if v.source == "spark-vllm"}

    def to_json(self) -> dict:
        return {
            "variables": [
                {"name": v.name, "value": v.value, "planned": v.planned, "source": v.source, "why": v.why}
                for v in self.variables
            ],
            "notes": list(self.notes),
            "roce_gids": [d.to_json() for d in self.roce],
        }


def roce_hcas(interfaces: tuple[Interface, ...]) -> tuple[str, ...]:
    """RoCE devices of the up ports, for NCCL_IB_HCA."""
    return tuple(dev for i in interfaces if i.up for dev in i.roce_devices)


def gid_plan(choice: Choice, interfaces: tuple[Interface, ...]) -> GidPlan:
    """The GID of every device in NCCL_IB_HCA, on its own interface (the chosen address
    first on the chosen interface)."""
    chosen = []
    for i in interfaces:
        if i.up:
            addresses = (choice.address, *(a for a in i.addresses if a != choice.address)) \
                if i.name == choice.name else i.addresses
            chosen += [pick(dev, i.name, addresses, i.gids) for dev in i.roce_devices]
    return plan_gids(tuple(chosen))


def planned_values(choice: Choice, interfaces: tuple[Interface, ...], head_ip: str | None,
                   extra: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(name, value, why) for each variable, before the user's own values are weighed."""
    name = choice.name
    rows = [
        ("VLLM_HOST_IP", choice.address, f"this node's address on {name}"),
        ("NCCL_SOCKET_IFNAME", name, "NCCL's bootstrap socket on the fabric"),
        ("GLOO_SOCKET_IFNAME", name, "torch.distributed (Gloo) on the fabric"),
        ("TP_SOCKET_IFNAME", name, "tensorpipe on the fabric"),
        ("UCX_NET_DEVICES", name, "UCX on the fabric"),
        ("OMPI_MCA_btl_tcp_if_include", name, "Open MPI's TCP transport on the fabric"),
        ("MASTER_ADDR", head_ip or choice.address, "the head's address"),
        ("RAY_memory_monitor_refresh_ms", "0", "Ray's memory monitor kills workers on unified memory"),
        # vLLM's tensor-parallel ranks are Ray workers, which Ray starts at nice 15, below
        # vLLM's own engine process (nice 0) that waits on them: under CPU pressure the
        # engine's polling then takes the ranks' CPU (docs/performance.md).
        ("RAY_worker_niceness", "0", "vLLM's tensor-parallel ranks run as Ray workers: no lower priority than vLLM's engine"),
    ]
    hcas = roce_hcas(interfaces)
    if hcas:
        rows.append(("NCCL_IB_HCA", ",".join(hcas), "RoCE devices of the up ports"))
        rows += gid_plan(choice, interfaces).rows()
    rows.extend((k, v, "spark-vllm setting") for k, v in (extra or {}).items())
    return rows


def plan_environment(choice: Choice, interfaces: tuple[Interface, ...], environ: Mapping[str, str],
                     head_ip: str | None = None, force: bool = False,
                     extra: Mapping[str, str] | None = None) -> EnvPlan:
    """The plan. A value the user already set wins (source "user") unless `force`."""
    variables, notes = [], []
    for name, value, why in planned_values(choice, interfaces, head_ip, extra):
        user = environ.get(name)
        if user is not None and not force:
            variables.append(EnvVar(name, user, value, "user", why))
            if user != value:
                notes.append(f"{name}={user} was already set and is kept (spark-vllm would set {value}; --force overrides)")
        else:
            variables.append(EnvVar(name, value, value, "spark-vllm", why))
    gids = gid_plan(choice, interfaces)
    if not roce_hcas(interfaces):
        notes.append("no up RoCE device: NCCL_IB_HCA not set, NCCL will use sockets")
    elif gids.note:
        notes.append(gids.note)
    return EnvPlan(tuple(variables), tuple(notes), gids.devices)


def apply_plan(plan: EnvPlan, environ: MutableMapping[str, str]) -> None:
    environ.update(plan.to_set())


def shell_lines(plan: EnvPlan) -> list[str]:
    """`export NAME=VALUE` lines, quoted for POSIX shells."""
    import shlex

    return [f"export {name}={shlex.quote(value)}" for name, value in plan.as_dict().items()]
