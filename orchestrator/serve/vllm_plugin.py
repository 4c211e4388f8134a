"""spark-vllm's vLLM general plugin: Ray must not take SIGTERM away from vLLM's engine.

vLLM (0.32) drains on SIGTERM by forwarding it to its engine-core process. That
process's handler finishes the accepted requests within `--shutdown-timeout`. With
the Ray executor, though, that process then calls `ray.init`, and `ray.init` replaces
any SIGTERM handler with `sys.exit`. The engine core then exits at once, and the
requests it held hang until their clients give up. This was seen on the namespace
cluster with 4 streaming requests and `spark-vllm stop`.

vLLM calls `general_plugin` in each of its processes. In the engine core it runs
before the executor calls `ray.init`. From then on Ray sets its SIGTERM handler only
where no Python handler is installed yet. Processes where SIGTERM has no handler
(Ray's own workers) are unchanged. The plugin is inert unless `serve` set
SPARK_VLLM_SERVING=1 for vLLM's processes.

The same `ray.init` also installs Ray's C++ crash handler, which prints a stack dump
("*** SIGTERM received ... ***") on every SIGTERM before vLLM's handler runs: on
each ordinary stop (`spark-vllm stop`, `docker stop`, `ray job stop`). In a process
whose Ray driver is not connected yet (the engine core), the plugin turns it off, as
RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1 would; a value you set yourself wins. Python's
faulthandler, which Ray enables, still reports a crash.
"""

from __future__ import annotations

import os
import signal

from ..settings import Settings

SERVING_VAR = "SPARK_VLLM_SERVING"


def general_plugin() -> None:
    """Entry point `vllm.general_plugins:spark_vllm`."""
    if Settings.from_env(os.environ).serving:
        keep_sigterm_handlers()
        quiet_sigterm_in_new_drivers(os.environ)


def keep_sigterm_handlers() -> None:
    """Make Ray's `set_sigterm_handler` leave an installed Python handler in place
    (idempotent: vLLM may load plugins more than once in a process)."""
    import ray._private.utils as ray_utils

    original = ray_utils.set_sigterm_handler
    if getattr(original, "keeps_existing", False):
        return

    def set_sigterm_handler(handler) -> None:
        if callable(signal.getsignal(signal.SIGTERM)):
            return  # someone (vLLM's engine core) handles SIGTERM already
        original(handler)

    set_sigterm_handler.keeps_existing = True
    ray_utils.set_sigterm_handler = set_sigterm_handler


def quiet_sigterm_in_new_drivers(environ) -> None:
    """No C++ stack dump on SIGTERM from a Ray driver this process connects later.
    Ray reads its switch once, at import: set the constant it was read into."""
    import ray
    from ray._private import ray_constants

    if "RAY_DISABLE_FAILURE_SIGNAL_HANDLER" not in environ and not ray.is_initialized():
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
