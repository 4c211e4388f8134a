"""Which NCCL library each node loads, and choosing one (`--nccl-library`).

A pip torch loads the libnccl.so.2 of the `nvidia-nccl-cu*` wheel; DGX OS ships its
own build in the system's lib dirs. Two builds of the same version have been seen to
hang where the other did not (vLLM #42354, #41725), and two nodes on different builds
are a version skew like any other. So a node's report names the file torch's loader
resolves (path, the version NCCL prints, a sha256), what vLLM loads
(`VLLM_NCCL_SO_PATH` when set) and the other builds the system has.

Stdlib only (scripts/gpu/nccl_report.py runs it with nothing but PYTHONPATH). The
decisions are pure functions over strings; the readers (ldd, ldconfig, hashing a
file) are thin and never raise: what cannot be read is None.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata, util as importlib_util
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import UsageError

SONAME = "libnccl.so.2"
# Where a system NCCL lives: Debian/Ubuntu multiarch dirs (DGX OS), CUDA's, RHEL's.
SYSTEM_DIRS = ("/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64",
               "/usr/local/cuda/targets/sbsa-linux/lib", "/usr/lib64", "/usr/lib", "/usr/local/lib")
NCCL_WHEELS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11")
CHOICES = ("bundled", "system")  # or a path
# "strings" on libnccl shows this: NCCL builds it into the library on purpose.
BANNER = re.compile(rb"NCCL version (\d+\.\d+\.\d+[0-9A-Za-z.+_-]*)")
CHUNK = 8 << 20


@dataclass(frozen=True)
class NcclBuild:
    """One libnccl file."""

    path: str
    version: str | None = None  # "2.28.9+cuda13.0", from the banner in the file
    sha256: str | None = None

    @property
    def short(self) -> str:
        return (self.sha256 or "?")[:12]

    def describe(self) -> str:
        return f"{self.version or 'version ?'} ({self.path}, sha256 {self.short})"

    def to_json(self) -> dict:
        return {"path": self.path, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class NcclReport:
    """One node's NCCL: what torch loads, what vLLM loads, what else is installed."""

    torch_cuda: str | None  # None: a CPU build of torch, which has no NCCL
    torch: NcclBuild | None = None  # the file torch's libtorch_cuda.so resolves
    linkage: str = "none"  # "shared", "static" (inside libtorch_cuda.so), "none" (CPU), "unknown"
    vllm: NcclBuild | None = None  # VLLM_NCCL_SO_PATH, when set
    others: tuple[NcclBuild, ...] = ()  # other builds on this machine (another file, another hash)
    preload: str | None = None  # LD_PRELOAD's libnccl, when set

    def build_key(self) -> str | None:
        """What must be equal on every node: the version and the file's hash."""
        if self.torch_cuda is None:
            return None
        lib = self.vllm or self.torch
        return f"{lib.version or '?'} sha256:{lib.short}" if lib else self.linkage

    def summary(self) -> str:
        if self.torch_cuda is None:
            return "torch is a CPU build: no NCCL"
        if self.torch is None:
            return ("torch links NCCL statically (inside libtorch_cuda.so)" if self.linkage == "static"
                    else "torch's NCCL could not be found (no ldd, or libtorch_cuda.so unreadable)")
        parts = [f"torch loads NCCL {self.torch.describe()}"]
        if self.vllm and self.vllm.path != self.torch.path:
            parts.append(f"vLLM loads {self.vllm.describe()} (VLLM_NCCL_SO_PATH)")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"torch_cuda": self.torch_cuda, "linkage": self.linkage,
                "torch": self.torch.to_json() if self.torch else None,
                "vllm": self.vllm.to_json() if self.vllm else None,
                "others": [b.to_json() for b in self.others], "preload": self.preload,
                "build": self.build_key(), "summary": self.summary()}

    @classmethod
    def from_json(cls, data: Mapping) -> "NcclReport":
        def build(d):
            return NcclBuild(d["path"], d.get("version"), d.get("sha256")) if d else None

        return cls(data.get("torch_cuda"), build(data.get("torch")), data.get("linkage", "unknown"),
                   build(data.get("vllm")), tuple(build(d) for d in data.get("others") or ()), data.get("preload"))


# --- pure ----------------------------------------------------------------------
def parse_ldd(text: str) -> dict[str, str]:
    """`ldd` output -> {soname: resolved path} (unresolved ones left out). A preloaded
    library shows as a bare path, and satisfies the soname it carries."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line) or re.match(r"\s*((/\S+))\s+\(0x", line)
        if m:
            out[Path(m.group(1)).name if m.group(1).startswith("/") else m.group(1)] = m.group(2)
    return out


def nccl_in(resolved: Mapping[str, str]) -> str | None:
    """The libnccl among `parse_ldd`'s libraries (libnccl.so.2, or a preloaded libnccl.so.2.x)."""
    return resolved.get(SONAME) or next((p for name, p in resolved.items() if name.startswith("libnccl.so")), None)


def parse_ldconfig(text: str) -> list[str]:
    """`ldconfig -p` -> the paths of every libnccl.so* in the loader's cache."""
    return [m.group(1) for line in text.splitlines()
            if (m := re.match(r"\s*libnccl\.so[.\d]*\s.*=>\s*(/\S+)", line))]


def banner_version(data: bytes) -> str | None:
    m = BANNER.search(data)
    return m.group(1).decode() if m else None


def preloaded_nccl(ld_preload: str | None) -> str | None:
    """The libnccl in LD_PRELOAD (separated by spaces or colons), if any."""
    return next((p for p in re.split(r"[\s:]+", ld_preload or "") if "libnccl" in Path(p).name), None)


def other_builds(loaded: NcclBuild | None, found: Iterable[NcclBuild]) -> tuple[NcclBuild, ...]:
    """Builds that are not the loaded one: another hash (a symlink to it is the same)."""
    seen, out = {loaded.sha256} if loaded and loaded.sha256 else set(), []
    for b in found:
        key = b.sha256 or b.path
        if key not in seen and (loaded is None or b.path != loaded.path):
            seen.add(key)
            out.append(b)
    return tuple(out)


def choose_library(choice: str, bundled: str | None, system: Iterable[str]) -> str:
    """`--nccl-library bundled|system|PATH` -> the file every process of this node loads."""
    system = list(system)
    if choice == "bundled":
        if not bundled:
            raise UsageError("--nccl-library bundled: this node has no pip-bundled NCCL "
                             f"({' / '.join(NCCL_WHEELS)} is not installed)",
                             "use --nccl-library system, or a path to libnccl.so.2")
        return bundled
    if choice == "system":
        if not system:
            raise UsageError(f"--nccl-library system: no libnccl in the loader's cache or in {', '.join(SYSTEM_DIRS[:3])}",
                             "install DGX OS's libnccl2, or give the path: --nccl-library /path/to/libnccl.so.2")
        return system[0]
    if not Path(choice).is_file():
        raise UsageError(f"--nccl-library {choice}: no such file", "bundled, system, or the path of a libnccl.so.2")
    return str(Path(choice).resolve())


def library_env(path: str, environ: Mapping[str, str]) -> dict[str, str]:
    """What makes every process of the node load `path`: vLLM's pynccl opens
    VLLM_NCCL_SO_PATH; torch's libtorch_cuda.so takes the libnccl.so.2 already loaded
    (LD_PRELOAD, inherited by the raylet and so by every Ray worker)."""
    kept = [p for p in re.split(r"[\s:]+", environ.get("LD_PRELOAD", "")) if p and "libnccl" not in Path(p).name]
    return {"VLLM_NCCL_SO_PATH": path, "LD_PRELOAD": ":".join([path, *kept])}


# --- readers (thin) ----------------------------------------------------------------
def file_build(path: str) -> NcclBuild:
    """Hash the file and find its banner in one pass."""
    digest, version, tail = hashlib.sha256(), None, b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                if version is None:
                    version = banner_version(tail + chunk)
                    tail = chunk[-64:]
    except OSError:
        return NcclBuild(path)
    return NcclBuild(str(path), version, digest.hexdigest())


def torch_library() -> Path | None:
    """torch's libtorch_cuda.so, found without importing torch (seconds)."""
    spec = importlib_util.find_spec("torch")
    if not spec or not spec.origin:
        return None
    lib = Path(spec.origin).parent / "lib" / "libtorch_cuda.so"
    return lib if lib.exists() else None


def torch_cuda_version() -> str | None:
    spec = importlib_util.find_spec("torch")
    try:
        text = Path(spec.origin).with_name("version.py").read_text() if spec and spec.origin else ""
    except OSError:
        return None
    m = re.search(r"^cuda\b[^=]*=\s*['\"]([\d.]+)['\"]", text, re.M)
    return m.group(1) if m else None


def resolve(lib: Path, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(path of the libnccl.so.2 the loader gives `lib`, linkage), as ldd sees it with
    this environment (LD_PRELOAD and LD_LIBRARY_PATH count)."""
    if not shutil.which("ldd"):
        return None, "unknown"
    try:
        out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, timeout=30, env=dict(environ))
    except (OSError, subprocess.TimeoutExpired):
        return None, "unknown"
    path = nccl_in(parse_ldd(out.stdout))
    if path:
        return path, "shared"
    return None, "static" if out.returncode == 0 else "unknown"


def bundled_library() -> str | None:
    """The libnccl.so.2 of the installed nvidia-nccl-cu* wheel."""
    for name in NCCL_WHEELS:
        try:
            files = metadata.distribution(name).files or ()
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == SONAME:
                return str(Path(f.locate()).resolve())
    return None


def system_libraries() -> list[str]:
    """libnccl.so.2 files the system has: the loader's cache first, then the usual dirs."""
    found = []
    if shutil.which("ldconfig") or Path("/sbin/ldconfig").exists():
        try:
            out = subprocess.run([shutil.which("ldconfig") or "/sbin/ldconfig", "-p"], capture_output=True,
                                 text=True, timeout=20)
            found += parse_ldconfig(out.stdout)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for d in SYSTEM_DIRS:
        found += sorted(glob.glob(os.path.join(d, "libnccl.so*")))
    resolved = []
    for p in found:
        real = str(Path(p).resolve())
        if Path(real).is_file() and real not in resolved and not real.endswith(".a"):
            resolved.append(real)
    return resolved


def node_report(environ: Mapping[str, str] = os.environ, with_others: bool = True) -> NcclReport:
    """This node's NCCL. `with_others=False` skips hashing the system's other builds
    (the version check compares only what is loaded)."""
    cuda = torch_cuda_version()
    preload = preloaded_nccl(environ.get("LD_PRELOAD"))
    if cuda is None:
        return NcclReport(None, preload=preload)
    lib = torch_library()
    path, linkage = resolve(lib, environ) if lib else (None, "unknown")
    torch_build = file_build(str(Path(path).resolve())) if path else None
    vllm_path = environ.get("VLLM_NCCL_SO_PATH")
    vllm = None
    if vllm_path:
        vllm = torch_build if torch_build and Path(vllm_path).resolve() == Path(torch_build.path) \
            else file_build(str(Path(vllm_path).resolve()))
    others = ()
    if with_others:
        candidates = [p for p in [bundled_library(), *system_libraries()] if p]
        loaded = {b.path for b in (torch_build, vllm) if b}
        others = other_builds(torch_build, (file_build(p) for p in candidates if p not in loaded))
    return NcclReport(cuda, torch_build, linkage, vllm, others, preload)


def chosen_library_env(choice: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`--nccl-library` resolved on this node: the variables its processes start with."""
    bundled = bundled_library() if choice == "bundled" else None
    system = system_libraries() if choice == "system" else ()
    return library_env(choose_library(choice, bundled, system), environ)
