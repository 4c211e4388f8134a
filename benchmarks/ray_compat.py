"""`make compat`: the cluster layer against each Ray that matters, for real.

For the declared minimum (orchestrator/cluster/raycompat.py, pyproject's `ray>=`), the
newest Ray on the package index (`pip index versions ray`) and Ray 2.51.1 (below the
minimum: the one line and exit 17), it builds a venv under
~/.cache/spark-vllm/compat/ray-X (SPARK_VLLM_COMPAT_CACHE) holding this project without
vLLM plus `ray[default]==X`, once, then runs tests/cluster/test_ray_compat.py with that
venv's Python in two simulated Sparks (root, network namespaces): head, worker, status,
stop, a Ray client without the token refused. Writes benchmarks/results/ray_compat.json.
Slow (a venv is a few minutes the first time), so not part of `make test`.

    .venv/bin/python -m benchmarks.ray_compat [--ray X ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.cluster import raycompat

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BELOW_MINIMUM = "2.51.1"  # the Ray the issue saw fail with a traceback
TEST = "tests/cluster/test_ray_compat.py"


def cache_dir(environ=os.environ) -> Path:
    return Path(environ.get("SPARK_VLLM_COMPAT_CACHE") or Path.home() / ".cache" / "spark-vllm" / "compat")


def newest_ray(index_output: str) -> str:
    """Pure: the newest version in `pip index versions ray`'s output."""
    m = re.search(r"Available versions:\s*([^,\s]+)", index_output) or re.search(r"^ray \(([^)]+)\)", index_output,
                                                                                  re.M)
    if not m:
        raise SystemExit(f"could not read the newest Ray from `pip index versions ray`:\n{index_output[-1000:]}")
    return m.group(1)


def project_requirements(pyproject: str) -> list[str]:
    """Pure: this project's own dependencies, Ray left out (the venv's Ray is pinned)."""
    deps = tomllib.loads(pyproject)["project"]["dependencies"]
    return [d for d in deps if not re.match(r"ray\b", d)]


def pip(python: Path, *args: str, timeout: float = 900) -> None:
    r = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], text=True,
                       capture_output=True, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"pip {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def build_venv(version: str, cache: Path) -> Path:
    """A venv with `ray[default]==version` and this project without vLLM (its Ray
    dependency not resolved, so an older Ray can be installed beside it); reused once
    complete. The project itself is reinstalled each time, to be this checkout."""
    venv = cache / f"ray-{version}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        pip(python, "install", f"ray[default]=={version}", *project_requirements((REPO / "pyproject.toml").read_text()))
        (venv / ".complete").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
    pip(python, "install", "--no-deps", "--force-reinstall", str(REPO))
    return python


def run_tests(python: Path, version: str, tmp: Path) -> dict:
    """tests/cluster/test_ray_compat.py with the venv's Python: {test: outcome}."""
    xml = tmp / f"ray-{version}.xml"
    env = {**os.environ, "SPARK_VLLM_COMPAT_PYTHON": str(python)}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST, f"--junitxml={xml}"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return {"ray": version, "outcomes": outcomes, "seconds": round(time.monotonic() - t0, 1),
            "ok": r.returncode == 0, "output_tail": "" if r.returncode == 0 else r.stdout[-3000:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ray", nargs="+", metavar="X",
                    help="Ray versions (default: the declared minimum, the newest, and 2.51.1)")
    args = ap.parse_args(argv)
    if args.ray:
        versions = args.ray
    else:
        index = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "ray"], capture_output=True,
                               text=True, timeout=300).stdout
        versions = [raycompat.dotted(raycompat.MIN_RAY), newest_ray(index), BELOW_MINIMUM]
    cache, tmp = cache_dir(), Path(os.environ.get("TMPDIR", "/tmp")) / f"spark-vllm-compat-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    runs = []
    for version in versions:
        print(f"Ray {version}: venv under {cache}", flush=True)
        python = build_venv(version, cache)
        run = run_tests(python, version, tmp)
        runs.append(run)
        print(f"Ray {version}: {'ok' if run['ok'] else 'FAILED'} {run['outcomes']} ({run['seconds']} s)", flush=True)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
              "minimum": raycompat.dotted(raycompat.MIN_RAY), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_compat.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'ray_compat.json'}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
