"""Which NCCL library a node loads and choosing one: the decisions over plain strings,
the readers over files made here, `--nccl-library` through the CLI, and the build
skew refused like any other version skew."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys

import pytest

from orchestrator.cluster import nccl, versions
from orchestrator.cluster.nccl import NcclBuild, NcclReport
from orchestrator.errors import UsageError

from conftest import REPO, clean_env

LDD = """\tlinux-vdso.so.1 (0x0000ffff9a0e0000)
\tlibc10_cuda.so => /venv/lib/python3.12/site-packages/torch/lib/libc10_cuda.so (0x0000ffff98e00000)
\tlibnccl.so.2 => /venv/lib/python3.12/site-packages/torch/lib/../../nvidia/nccl/lib/libnccl.so.2 (0x0000ffff8c000000)
\tlibcudart.so.13 => not found
"""
LDCONFIG = """1234 libs found in cache `/etc/ld.so.cache'
\tlibnccl.so.2 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libnccl.so.2
\tlibnccl.so (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libnccl.so
\tlibnccl-net.so (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libnccl-net.so
"""
PIP = NcclBuild("/venv/nvidia/nccl/lib/libnccl.so.2", "2.28.9+cuda13.0", "a" * 64)
DGX = NcclBuild("/usr/lib/aarch64-linux-gnu/libnccl.so.2.28.9", "2.28.9+cuda13.0", "b" * 64)


def test_ldd_and_ldconfig_are_read():
    assert nccl.parse_ldd(LDD)["libnccl.so.2"].endswith("nvidia/nccl/lib/libnccl.so.2")
    assert "libcudart.so.13" not in nccl.parse_ldd(LDD)  # not found: left out
    assert nccl.parse_ldconfig(LDCONFIG) == ["/usr/lib/aarch64-linux-gnu/libnccl.so.2",
                                             "/usr/lib/aarch64-linux-gnu/libnccl.so"]


def test_a_preloaded_nccl_is_what_ldd_resolves():
    preloaded = ("\tlinux-vdso.so.1 (0x0000ffff9a0e0000)\n"
                 "\t/usr/lib/aarch64-linux-gnu/libnccl.so.2.28.9 (0x0000ffff8c000000)\n"
                 "\tlibc10_cuda.so => /venv/torch/lib/libc10_cuda.so (0x0000ffff98e00000)\n")
    assert nccl.nccl_in(nccl.parse_ldd(preloaded)) == "/usr/lib/aarch64-linux-gnu/libnccl.so.2.28.9"
    assert nccl.nccl_in(nccl.parse_ldd(LDD)).endswith("nvidia/nccl/lib/libnccl.so.2")
    assert nccl.nccl_in(nccl.parse_ldd("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n")) is None


def test_banner_version_from_the_library_bytes():
    assert nccl.banner_version(b"\x00junk\x00NCCL version 2.28.9+cuda13.0\x00more") == "2.28.9+cuda13.0"
    assert nccl.banner_version(b"NCCL version 2.27.7\x00") == "2.27.7"
    assert nccl.banner_version(b"no banner here") is None


def test_file_build_hashes_and_finds_a_banner_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(nccl, "CHUNK", 64)
    data = b"x" * 50 + b"NCCL version 2.28.9+cuda13.0\x00" + b"y" * 200
    lib = tmp_path / "libnccl.so.2"
    lib.write_bytes(data)
    b = nccl.file_build(str(lib))
    assert (b.version, b.sha256) == ("2.28.9+cuda13.0", hashlib.sha256(data).hexdigest())
    assert nccl.file_build(str(tmp_path / "missing")).sha256 is None


def test_other_builds_are_other_hashes():
    same_file_again = NcclBuild("/usr/lib/libnccl.so.2", PIP.version, PIP.sha256)  # a copy of the loaded one
    assert nccl.other_builds(PIP, [same_file_again, DGX, DGX]) == (DGX,)
    assert nccl.other_builds(None, [DGX]) == (DGX,)


def test_preload_entries():
    assert nccl.preloaded_nccl("/a/libjemalloc.so:/usr/lib/libnccl.so.2") == "/usr/lib/libnccl.so.2"
    assert nccl.preloaded_nccl("") is None and nccl.preloaded_nccl(None) is None


def test_choice_of_library():
    assert nccl.choose_library("bundled", PIP.path, []) == PIP.path
    assert nccl.choose_library("system", None, [DGX.path, "/other"]) == DGX.path
    with pytest.raises(UsageError, match="no pip-bundled NCCL"):
        nccl.choose_library("bundled", None, [DGX.path])
    with pytest.raises(UsageError, match="no libnccl in the loader's cache"):
        nccl.choose_library("system", PIP.path, [])
    with pytest.raises(UsageError, match="no such file"):
        nccl.choose_library("/nope/libnccl.so.2", None, [])


def test_library_env_for_vllm_and_torch():
    env = nccl.library_env(DGX.path, {"LD_PRELOAD": "/lib/libjemalloc.so /old/libnccl.so.2"})
    assert env == {"VLLM_NCCL_SO_PATH": DGX.path, "LD_PRELOAD": f"{DGX.path}:/lib/libjemalloc.so"}
    assert nccl.library_env(DGX.path, {})["LD_PRELOAD"] == DGX.path


def test_report_summary_and_build_key():
    cpu = NcclReport(None)
    assert cpu.build_key() is None and cpu.summary() == "torch is a CPU build: no NCCL"
    pip = NcclReport("13.0", PIP, "shared", others=(DGX,))
    assert pip.build_key() == "2.28.9+cuda13.0 sha256:aaaaaaaaaaaa"
    assert pip.summary().startswith("torch loads NCCL 2.28.9+cuda13.0 (/venv/nvidia/nccl/lib/libnccl.so.2")
    forced = NcclReport("13.0", PIP, "shared", vllm=DGX)  # VLLM_NCCL_SO_PATH wins for vLLM's all-reduce
    assert forced.build_key().endswith("sha256:bbbbbbbbbbbb") and "VLLM_NCCL_SO_PATH" in forced.summary()
    assert NcclReport.from_json(pip.to_json()) == pip
    assert NcclReport("13.0", None, "static").summary().startswith("torch links NCCL statically")


def test_two_builds_of_one_version_are_a_skew():
    reports = {"10.0.0.1": {"nccl": "2.28.9", "nccl-build": NcclReport("13.0", PIP, "shared").build_key()},
               "10.0.0.2": {"nccl": "2.28.9", "nccl-build": NcclReport("13.0", DGX, "shared").build_key()}}
    skews = versions.compare(reports)
    assert [s.component for s in skews] == ["nccl-build"]
    assert "sha256:aaaa" in versions.skew_table(skews)
    reports["10.0.0.2"]["nccl-build"] = reports["10.0.0.1"]["nccl-build"]
    assert versions.compare(reports) == []


def test_this_cpu_build_has_no_nccl_and_says_so():
    report = nccl.node_report()
    assert report.torch_cuda is None and report.build_key() is None
    assert versions.local_report()["nccl-build"] is None


def test_nccl_library_path_sets_both_variables(tmp_path):
    from launch.clustercmd import nccl_library_env

    lib = tmp_path / "libnccl.so.2"
    lib.write_bytes(b"NCCL version 2.28.9+cuda13.0")
    env = nccl_library_env(argparse.Namespace(nccl_library=str(lib)))
    assert env["VLLM_NCCL_SO_PATH"] == str(lib) and env["LD_PRELOAD"].split(":")[0] == str(lib)
    assert nccl_library_env(argparse.Namespace(nccl_library=None)) == {}


def test_bundled_without_the_wheel_is_one_line_before_ray(tmp_path):
    """This machine's torch is a CPU build with no nvidia-nccl wheel: --nccl-library
    bundled is refused (exit 2) before any Ray node starts."""
    r = subprocess.run([sys.executable, "-m", "launch", "head", "--simulate", "--iface", "lo", "--nccl-library",
                        "bundled", "--sysfs-root", str(tmp_path)], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env=clean_env(SPARK_VLLM_RUN_DIR=str(tmp_path / "run")))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("spark-vllm: error:")]
    assert len(lines) == 1 and "no pip-bundled NCCL" in lines[0] and "Ray" not in r.stderr
