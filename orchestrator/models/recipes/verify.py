"""The copy of a model on a node, and the check that every node holds the same one.

When a node fetches or copies a model, its file list, sizes and SHA-256 are recorded in a
manifest beside the snapshot (`<repo cache>/spark-vllm/<commit>.json`; in a local model
folder, `.spark-vllm-manifest.json`). Before an offline start each node's copy is read
against its manifest: a file whose size or modification time changed since it was
recorded is hashed again (`verify_hashes`: every file is), a Hub blob is held to the
SHA-256 its name is, and each file must be readable by the serving user (no broken
symlink, no file it may not open). `compare` then holds every node's list to the head's.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..hub import HubAccess, cached_snapshot
from ..mirror import sha256_of

LOCAL_MANIFEST = ".spark-vllm-manifest.json"
SHA256 = re.compile(r"[0-9a-f]{64}")


def manifest_path(folder: Path) -> Path:
    if folder.parent.name == "snapshots":  # a Hugging Face cache snapshot
        return folder.parent.parent / "spark-vllm" / f"{folder.name}.json"
    return folder / LOCAL_MANIFEST


def read_manifest(folder: Path) -> dict[str, dict]:
    try:
        return {f["path"]: f for f in json.loads(manifest_path(folder).read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_manifest(folder: Path, files: dict[str, dict]) -> None:
    path = manifest_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")  # (two nodes may share a folder)
        tmp.write_text(json.dumps({"files": [files[p] for p in sorted(files)]}, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only copy: checked again, by hashing, next time


def read_copy(folder: Path, verify_hashes: bool = False) -> dict:
    """This node's copy: {"files": {path: {size, sha256}}, "problems": [...], "hashed": n},
    the manifest brought up to date."""
    recorded = read_manifest(folder)
    files, problems, hashed = {}, [], 0
    keep = dict(recorded)  # the manifest written back: a file found bad keeps its old entry
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.name.startswith(LOCAL_MANIFEST) or path.is_dir():
            continue
        if path.is_symlink() and not path.exists():
            problems.append(f"{rel} is a broken symlink")
            continue
        if not os.access(path, os.R_OK):
            st = path.stat()
            problems.append(f"{rel} is not readable by uid {os.getuid()} (owner uid {st.st_uid}, "
                            f"mode {st.st_mode & 0o777:o})")
            continue
        st = path.stat()
        old = recorded.get(rel)
        blob = path.resolve().name
        if old and not verify_hashes and old["size"] == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            digest = old["sha256"]
        else:
            try:
                digest = sha256_of(path).hexdigest()
            except OSError as exc:
                problems.append(f"{rel} cannot be read: {exc.strerror}")
                continue
            hashed += 1
            if SHA256.fullmatch(blob) and digest != blob:
                problems.append(f"{rel} does not match its SHA-256 (the Hub's blob {blob[:12]})")
        files[rel] = {"path": rel, "size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns}
        if not problems or not problems[-1].startswith(rel + " "):
            keep[rel] = files[rel]
    problems += [f"{rel} is missing" for rel in sorted(set(recorded) - set(files))
                 if not any(p.startswith(rel + " ") for p in problems)]
    if keep != recorded:
        write_manifest(folder, keep)
    return {"files": {p: {"size": f["size"], "sha256": f["sha256"]} for p, f in files.items()},
            "problems": problems, "hashed": hashed}


def record(folder: str | Path) -> None:
    """After a fetch or a copy: the files that landed, added to the manifest (Hub blobs are
    named by their SHA-256 and not read again; small files are hashed). A file recorded
    before keeps its entry: if it changed since, the next check hashes it again."""
    folder = Path(folder)
    recorded = read_manifest(folder)
    files = dict(recorded)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(LOCAL_MANIFEST)):
        rel, st, blob = str(path.relative_to(folder)), path.stat(), path.resolve().name
        if rel in recorded:
            continue
        digest = blob if SHA256.fullmatch(blob) else sha256_of(path).hexdigest()
        files[rel] = {"path": rel, "size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns}
    if files != recorded:
        write_manifest(folder, files)


def copy_here(model: str, revision: str | None, local: bool, verify_hashes: bool, node: str) -> dict:
    """What runs on each node (a Ray task): find this node's copy and read it."""
    if local:
        folder = Path(model)
    else:
        folder = cached_snapshot(model, HubAccess.from_env(os.environ), revision)
    if folder is None or not folder.is_dir():
        return {"node": node, "folder": None, "files": {}, "problems": [f"no copy of {model}"
                + (f" at {revision[:12]}" if revision else "") + " on this node"], "hashed": 0}
    return {"node": node, "folder": str(folder), **read_copy(folder, verify_hashes)}


def compare(reports: dict[str, dict], head: str) -> list[str]:
    """Pure: every problem of every node, and each difference from the head's copy."""
    found = [f"{node}: {p}" for node, r in sorted(reports.items()) for p in r["problems"]]
    ref = reports[head]["files"]
    for node, r in sorted(reports.items()):
        if node == head or not r.get("folder"):
            continue
        for path in sorted(set(ref) | set(r["files"])):
            mine, theirs = r["files"].get(path), ref.get(path)
            if mine is None:
                found.append(f"{node}: {path} is missing (the head has it)")
            elif theirs is None:
                found.append(f"{node}: {path} is not in the head's copy")
            elif mine["size"] != theirs["size"]:
                found.append(f"{node}: {path} has {mine['size']} bytes, the head's {theirs['size']}")
            elif mine["sha256"] != theirs["sha256"]:
                found.append(f"{node}: {path} differs from the head's (SHA-256)")
    return found
