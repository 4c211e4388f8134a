"""Prepare the wheels the 2-GPU machine lacks (it reaches no registry).

Walks the requirements of the named packages with `pip download --no-deps`, one
level at a time, skipping what the machine's image already holds (its python3 has
torch 2.11.0+cu130 and the packages listed in HAVE) and the optional kernel packages
vLLM imports only when used. Wheels for CPython 3.12, manylinux x86_64.

    python3 scripts/gpu/wheelhouse.py OUT_DIR ray==2.60.0 pyroute2==0.9.7 [vllm==0.24.0]
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

# On the machine already (its image's package list), or not wanted there.
HAVE = set(map(canonicalize_name, """
accelerate aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click
cloudpickle cmake cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x einops filelock
frozenlist fsspec grpcio h11 hf-xet httpcore httpx huggingface-hub idna jinja2 markdown-it-py markupsafe
mdurl ml-dtypes msgpack multidict networkx ninja numba numpy nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx opencv-python-headless packaging pillow pip prometheus-client propcache
protobuf psutil py-cpuinfo pygments pyyaml regex requests rich safetensors sentencepiece
setuptools shellingham six sympy mpmath tiktoken tokenizers torch torchaudio torchvision tqdm transformers
triton typer urllib3 uvloop wheel yarl llvmlite
""".split()))
# vLLM's optional kernels (imported only when a model or backend needs them) and
# what only they need: too large to carry for a small bf16 model.
SKIP = set(map(canonicalize_name, """
flashinfer-python flashinfer-cubin tilelang nvidia-cudnn-frontend fastsafetensors
nvidia-cutlass-dsl quack-kernels tokenspeed-mla humming-kernels
""".split()))
# Requirements replaced, as seen on the GPU machine with vLLM 0.24.0: vLLM pins
# apache-tvm-ffi 0.1.9 for flashinfer (not carried), but the xgrammar it imports at
# start needs >= 0.1.11; llguidance 1.7 (imported at start too) is not on the index
# this machine reaches, and 1.6.1 imports. Without flashinfer, run vLLM with
# VLLM_USE_FLASHINFER_SAMPLER=0 (its sampler imports flashinfer otherwise).
REPLACE = {"apache-tvm-ffi": "apache-tvm-ffi>=0.1.11", "llguidance": "llguidance>=1.6.1,<1.8"}
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
       "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PIP = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
       "--python-version", "3.12", "--implementation", "cp",
       *[a for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                     "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")
         for a in ("--platform", n)]]


def requirements(wheel: Path, extras: set[str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    out = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or any(req.marker.evaluate({**ENV, "extra": e}) for e in extras | {""}):
                out.append(req)
    return out


def main(out: str, *specs: str) -> None:
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    done: dict[str, set[str]] = {}
    todo = [Requirement(s) for s in specs]
    while todo:
        batch = {}
        for req in todo:
            name = canonicalize_name(req.name)
            if name in REPLACE:
                req = Requirement(REPLACE[name])
            if name in HAVE or name in SKIP:
                continue
            if name in done and set(req.extras) <= done[name]:
                continue
            done.setdefault(name, set()).update(req.extras)
            batch[name] = req
        todo = []
        if not batch:
            break
        print("fetching", " ".join(sorted(batch)), file=sys.stderr)
        for req in batch.values():  # one at a time: one unsatisfiable pin must not stop the rest
            plain = Requirement(str(req))
            plain.extras, plain.marker = set(), None  # markers were evaluated for the target above
            r = subprocess.run([*PIP, "-d", str(dest), str(plain)], capture_output=True, text=True)
            if r.returncode:
                print(f"skip {plain}: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        for wheel in dest.glob("*.whl"):
            name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
            if name in batch:
                todo += requirements(wheel, done.get(name, set()))
    total = sum(w.stat().st_size for w in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels, {total / 1e6:.0f} MB in {dest}")


if __name__ == "__main__":
    main(*sys.argv[1:])
