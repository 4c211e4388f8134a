"""The supported Ray: the pure judgement over version strings, the range pyproject.toml
declares, and the CLI's one line and exit 17 below the minimum, for real: a Python that
finds an older Ray's package metadata first (`importlib.metadata` reads the first
`ray-*.dist-info` on the path), as in a venv or an image holding that Ray. The real old
Rays run in `make compat` (benchmarks/ray_compat.py)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from launch.exitcodes import exit_code_for
from orchestrator import errors
from orchestrator.cluster import raycompat
from orchestrator.cluster.raycompat import check_ray, image_requirement, parse_version

from conftest import REPO, clean_env


@pytest.mark.parametrize("text, want", [
    ("2.52.1", (2, 52, 1)), ("2.60", (2, 60, 0)), ("3", (3, 0, 0)), ("2.53.0rc1", (2, 53, 0)),
    ("2.60.0+nv25.11", (2, 60, 0)), ("2.52.0.dev0", (2, 52, 0)),
])
def test_parse_version(text, want):
    assert parse_version(text) == want


def test_parse_version_refuses_what_is_not_a_version():
    with pytest.raises(ValueError):
        parse_version("latest")


@pytest.mark.parametrize("version", ["2.52.0", "2.52.1", "2.60.0", "3.0.0"])
def test_supported_rays(version):
    assert check_ray(version) == version


@pytest.mark.parametrize("version", ["2.51.1", "2.48.0", "2.40.0", "1.13.1", "garbage"])
def test_older_rays_are_refused_naming_the_install(version):
    with pytest.raises(errors.UnsupportedRay) as e:
        check_ray(version)
    assert f"Ray {version} is installed; spark-vllm needs Ray 2.52 or newer" in str(e.value)
    assert e.value.hint == "pip install 'ray[default]>=2.52'"
    assert exit_code_for(e.value) == 17


def test_no_ray_is_refused_in_the_same_words():
    with pytest.raises(errors.UnsupportedRay) as e:
        check_ray(None)
    assert str(e.value) == ("Ray is not installed; spark-vllm needs Ray 2.52 or newer "
                            "(pip install 'ray[default]>=2.52')")


def test_pyproject_declares_the_minimum_everywhere_it_names_ray():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    rays = [r for r in reqs if r.startswith("ray")]
    assert rays and all(r.split(">=")[1] == raycompat.dotted(raycompat.MIN_RAY[:2]) for r in rays), rays


@pytest.mark.parametrize("installed, want", [
    (None, "ray[default]>=2.52.0"), ("2.51.1", "ray[default]>=2.52.0"), ("2.48.0", "ray[default]>=2.52.0"),
    ("2.52.1", "ray[default]==2.52.1"), ("2.60.0", "ray[default]==2.60.0"),
])
def test_an_image_keeps_a_supported_ray_and_replaces_an_older_one(installed, want):
    assert image_requirement(installed) == want


@pytest.fixture
def old_ray_first(tmp_path):
    """A path entry whose metadata says Ray 2.51.1, ahead of the venv's Ray."""
    info = tmp_path / "ray-2.51.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ray\nVersion: 2.51.1\n")
    return clean_env(PYTHONPATH=f"{tmp_path}:{REPO}")


@pytest.mark.parametrize("argv", [
    ["head", "--iface", "lo", "--simulate", "--nodes", "1"],
    ["worker", "--iface", "lo", "--head-ip", "127.0.0.1"],
    ["status", "--json", "--iface", "lo"],
    ["serve", "some/model", "--iface", "lo", "--simulate", "--tensor-parallel-size", "2"],
    ["fabric-test", "--iface", "lo"],
])
def test_every_ray_command_stops_in_one_line_below_the_minimum(old_ray_first, argv):
    r = subprocess.run([sys.executable, "-m", "launch", *argv], env=old_ray_first, capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 17, r.stderr
    assert r.stderr.strip().splitlines() == [
        "spark-vllm: error: Ray 2.51.1 is installed; spark-vllm needs Ray 2.52 or newer for its token "
        "authentication (pip install 'ray[default]>=2.52')"], r.stderr
    assert r.stdout == ""


def test_commands_without_ray_still_run_below_the_minimum(old_ray_first):
    r = subprocess.run([sys.executable, "-m", "launch", "models", "--json"], env=old_ray_first,
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and '"models"' in r.stdout, r.stderr


# --- `make compat`'s pure parts (benchmarks/ray_compat.py) ---------------------------------
def test_compat_reads_the_newest_ray_from_pip_index():
    from benchmarks.ray_compat import newest_ray

    out = "ray (2.60.0)\nAvailable versions: 2.60.0, 2.59.0, 2.52.1\n  INSTALLED: 2.60.0\n"
    assert newest_ray(out) == "2.60.0"
    assert newest_ray("ray (2.61.0)\n") == "2.61.0"


def test_compat_installs_the_project_requirements_but_its_ray():
    from benchmarks.ray_compat import project_requirements

    reqs = project_requirements((REPO / "pyproject.toml").read_text())
    assert reqs and not any(r.startswith("ray") for r in reqs) and any(r.startswith("psutil") for r in reqs)
