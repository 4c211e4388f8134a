"""The restart budget for a wedged engine: how many restarts, and how long to pause first.

At most `max_restarts` restarts within any `window` seconds; before each, a pause that
doubles with every restart already in the window (`first_pause`, twice that, ... at most
`max_pause`), so that an engine that wedges again at once does not spin. Past the
budget the head exits with its own code (18) and the container's restart policy takes
over. `decide` is pure: the times of the past restarts in, a `Verdict` out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartBudget:
    """The defaults are `serve`'s (--max-restarts 3, --restart-window 3600); the pauses
    are in seconds."""

    max_restarts: int = 3
    window: float = 3600.0
    first_pause: float = 5.0
    max_pause: float = 300.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window <= 0 or self.first_pause < 0:
            raise ValueError(f"a restart budget needs max_restarts >= 0 (got {self.max_restarts}), "
                             f"window > 0 (got {self.window:g}) and first_pause >= 0 (got {self.first_pause:g})")


@dataclass(frozen=True)
class Verdict:
    restart: bool
    pause: float  # seconds to wait before the restart (0 when there is none)
    used: int  # restarts already made within the window
    budget: RestartBudget

    def describe(self) -> str:
        b = self.budget
        if self.restart:
            return (f"restart {self.used + 1} of at most {b.max_restarts} within {b.window:g} s, "
                    f"after a pause of {self.pause:g} s")
        return f"{self.used} restart(s) within {b.window:g} s already: --max-restarts {b.max_restarts} is spent"


def decide(budget: RestartBudget, past: tuple[float, ...], now: float) -> Verdict:
    """Pure. `past`: the times (one clock, e.g. time.monotonic()) of the restarts made so
    far; `now`: the time of this wedge."""
    used = sum(1 for t in past if now - t < budget.window)
    if used >= budget.max_restarts:
        return Verdict(False, 0.0, used, budget)
    return Verdict(True, min(budget.max_pause, budget.first_pause * 2 ** used), used, budget)
