"""The layout holds: one package a stage, data flowing one way, the product never
importing the simulation, and an installed (not editable) package that works."""

from __future__ import annotations

import ast
import subprocess
import sys
import venv
import zipfile

import pytest

from conftest import REPO

PRODUCT = ("net", "cluster", "serve", "models", "ops")
# A stage may import the stages before it, never one after it (discover, plan, apply,
# cluster, serve, supervise), nor the simulation.
ORDER = ("net", "cluster", "serve", "models", "ops")


def imported_stages(path, root=REPO) -> set[str]:
    """The orchestrator sub-packages (stages) a module imports, absolute or relative at
    any depth (a module of orchestrator/ops/supervision/ reaches the stages with `...`)."""
    package = list(path.relative_to(root).parts[:-1])  # ["orchestrator", stage, sub...]
    found = set()

    def add(dotted: list[str]) -> None:
        if len(dotted) > 1 and dotted[0] == "orchestrator":
            found.add(dotted[1])

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = (node.module or "").split(".")
            else:
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            if len(base) > 1:
                add(base)
            else:  # `from .. import net`: the names are the stages
                for a in node.names:
                    add(base + [a.name])
        elif isinstance(node, ast.Import):
            for a in node.names:
                add(a.name.split("."))
    return found


def product_modules():
    for stage in PRODUCT:
        yield from sorted((REPO / "orchestrator" / stage).rglob("*.py"))
    yield REPO / "orchestrator" / "errors.py"
    yield REPO / "orchestrator" / "settings.py"


@pytest.mark.parametrize("path", list(product_modules()), ids=lambda p: str(p.relative_to(REPO)))
def test_the_product_never_imports_the_simulation_nor_a_later_stage(path):
    stages = imported_stages(path)
    assert "sim" not in stages
    own = path.relative_to(REPO / "orchestrator").parts[0]
    if own in ORDER:
        later = set(ORDER[ORDER.index(own) + 1:])
        assert not stages & later, f"{path.name} imports a later stage: {stages & later}"


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    (tmp_path / "orchestrator" / "net").mkdir(parents=True)
    probe = tmp_path / "orchestrator" / "net" / "probe.py"
    probe.write_text("from ..sim import netns\nfrom orchestrator.serve.engine import x\nfrom .plan import y\n")
    assert imported_stages(probe, root=tmp_path) == {"sim", "serve", "net"}
    (tmp_path / "orchestrator" / "ops" / "supervision").mkdir(parents=True)
    deep = tmp_path / "orchestrator" / "ops" / "supervision" / "deep.py"
    deep.write_text("from ...cluster.nodes import x\nfrom ... import sim\nfrom .supervisor import y\n"
                    "from ..observation import logs\n")
    assert imported_stages(deep, root=tmp_path) == {"cluster", "sim", "ops"}


MAX_MODULES = 9  # a folder that holds more names more than one concern


@pytest.mark.parametrize("folder", sorted({p.parent for p in (REPO / "orchestrator").rglob("*.py")}),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_each_folder_holds_one_concern_of_at_most_nine_modules(folder):
    modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= MAX_MODULES, f"{folder.relative_to(REPO)}: {len(modules)} modules"


def test_installed_wheel_ships_every_package_and_the_vllm_plugin(tmp_path):
    """`pip install .` (not editable) in a fresh venv: every module is in the wheel and
    vLLM's platform-plugin entry point resolves (it is loaded by every vLLM process)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("spark_vllm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)) for d in ("orchestrator", "launch") for p in (REPO / d).rglob("*.py")}
    assert sources <= names, sorted(sources - names)

    venv.create(tmp_path / "venv", with_pip=False)
    py = str(tmp_path / "venv" / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    zipfile.ZipFile(wheel).extractall(site)  # what pip does for a pure wheel, offline
    probe = ("import os; from importlib import metadata\n"
             "ep, = [e for e in metadata.entry_points(group='vllm.platform_plugins') if e.name == 'spark_vllm_sim']\n"
             "f = ep.load(); off = f(); os.environ['SPARK_VLLM_SIMULATE'] = '1'\n"
             "print(off, f(), metadata.entry_points(group='console_scripts')['spark-vllm'].value)")
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "orchestrator.sim.platform.vllm_platform.SimulatedSparkPlatform", "launch.cli:main"]
