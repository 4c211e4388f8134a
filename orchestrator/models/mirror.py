"""One Hub download per cluster: the head serves its cached snapshot over the fabric and
the other nodes copy it, checksummed (SHA-256 a file) and resumable (HTTP Range from
what a node already holds), into their own Hugging Face cache in the same layout
(`blobs/`, `snapshots/<commit>/`, `refs/main`) as huggingface_hub writes: vLLM and an
offline run then find it as if it had been downloaded there.

The server lives on the head only while the copies run, bound to the head's fabric
address, and serves only the files of that one snapshot.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from ..errors import HubError
from .hub import HubAccess, cached_snapshot, repo_cache_dir, require_disk, write_main_once

CHUNK = 4 << 20
SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_of(path: Path, upto: int | None = None) -> "hashlib._Hash":
    h = hashlib.sha256()
    left = path.stat().st_size if upto is None else upto
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def manifest_of(snapshot: Path) -> list[dict]:
    """Each file of a cached snapshot: path, blob name, size, SHA-256 (an LFS blob is named
    by its SHA-256 already; the small files are hashed)."""
    files = []
    for link in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        blob = link.resolve()
        digest = blob.name if SHA256.fullmatch(blob.name) else sha256_of(blob).hexdigest()
        files.append({"path": str(link.relative_to(snapshot)), "blob": blob.name, "size": blob.stat().st_size,
                      "sha256": digest})
    return files


class SnapshotServer:
    """Ray actor on the head: serves one cached snapshot's blobs by name over HTTP."""

    def __init__(self, repo_id: str, bind_ip: str, head_report: dict) -> None:
        self.error = head_report if "error" in head_report else None
        if self.error:
            return
        access = HubAccess.from_env(os.environ)
        # the folder the head's fetch reported (a pinned commit's), else the cache's `main`
        snapshot = Path(head_report["folder"]) if head_report.get("folder") else cached_snapshot(repo_id, access)
        if snapshot is None:
            self.error = {"error": "HubError", "message": f"the head has no snapshot of {repo_id} to share",
                          "hint": "run spark-vllm download on the head"}
            return
        self.files = manifest_of(snapshot)
        self.server, url = serve_files({f["blob"]: snapshot.joinpath(f["path"]).resolve() for f in self.files},
                                       bind_ip)
        self.manifest_value = {"url": url, "commit": snapshot.name, "files": self.files,
                               "pinned": bool(head_report.get("pinned"))}

    def manifest(self) -> dict:
        return self.error or self.manifest_value

    def close(self) -> None:
        if not self.error:
            self.server.shutdown()


def serve_files(blobs: dict[str, Path], bind_ip: str) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on `bind_ip` (any free port) for exactly these files, by name; and its URL."""
    server = ThreadingHTTPServer((bind_ip, 0), type("BlobHandler", (BlobHandler,), {"blobs": blobs}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{bind_ip}:{server.server_address[1]}"


class FolderServer:
    """Ray actor on the head: a local model folder (MODEL given as a path) for the nodes that
    lack it, its files by relative path. The listing (names, sizes) is cheap; the files are
    hashed, and served, only once a node asks for the manifest."""

    SKIP = ".spark-vllm-manifest.json"  # the head's own record (recipes/verify.py)

    def __init__(self, folder: str, bind_ip: str) -> None:
        self.folder, self.bind_ip, self.value, self.server = Path(folder), bind_ip, None, None

    def listing(self) -> dict[str, int]:
        return {str(p.relative_to(self.folder)): p.stat().st_size for p in sorted(self.folder.rglob("*"))
                if p.is_file() and not p.name.startswith(self.SKIP)}

    def manifest(self) -> dict:
        if self.value is None:
            files = [{**f, "blob": f["path"]} for f in manifest_of(self.folder)
                     if not Path(f["path"]).name.startswith(self.SKIP)]
            self.server, url = serve_files({f["blob"]: self.folder / f["path"] for f in files}, self.bind_ip)
            self.value = {"url": url, "folder": str(self.folder), "files": files}
        return self.value

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def copy_folder_from_head(folder: str, listing: dict[str, int], get_manifest: Callable[[], dict], node: str,
                          on_bytes: Callable[[int], None] = lambda n: None) -> dict:
    """What a node does for a local model folder: nothing when it holds every file at the
    head's size; else the missing or different files, checksummed, into the same path."""
    target = Path(folder)
    have = {rel: (target / rel).stat().st_size for rel in listing if (target / rel).is_file()}
    total = sum(listing.values())
    moved = 0
    if any(have.get(rel) != size for rel, size in listing.items()):
        manifest = get_manifest()
        todo = [f for f in manifest["files"] if have.get(f["path"]) != f["size"]]
        target.mkdir(parents=True, exist_ok=True)
        require_disk(folder, sum(f["size"] for f in todo),
                     os.statvfs(target).f_bavail * os.statvfs(target).f_frsize, f"{node} ({folder})")
        for f in todo:
            (target / f["path"]).parent.mkdir(parents=True, exist_ok=True)
        on_bytes(total - sum(f["size"] for f in todo))
        moved = sum(copy_blob(manifest["url"], f, target, on_bytes) for f in todo)
    else:
        on_bytes(total)
    return {"node": node, "folder": folder, "commit": None, "total_bytes": total, "downloaded_bytes": moved,
            "source": "head"}


class BlobHandler(BaseHTTPRequestHandler):
    blobs: dict[str, Path] = {}
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.blobs.get(self.path.lstrip("/"))
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(m.group(1)) if m else 0
        self.send_response(206 if m else 200)
        self.send_header("Content-Length", str(size - start))
        if m:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            while block := f.read(CHUNK):
                self.wfile.write(block)


def copy_blob(url: str, entry: dict, blobs: Path, on_bytes: Callable[[int], None], attempts: int = 2) -> int:
    """One blob into `blobs/`, resuming a partial copy, checked against its SHA-256.
    Returns the bytes moved over the network."""
    final = blobs / entry["blob"]
    part = blobs / (entry["blob"] + ".copying")
    moved = 0
    for _ in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > entry["size"]:
            part.unlink()
            have = 0
        h = sha256_of(part, have) if have else hashlib.sha256()
        on_bytes(have)
        if have < entry["size"]:
            request = urllib.request.Request(f"{url}/{entry['blob']}", headers={"Range": f"bytes={have}-"} if have else {})
            with urllib.request.urlopen(request, timeout=60) as response, open(part, "ab" if have else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    moved += len(block)
                    on_bytes(len(block))
        if h.hexdigest() == entry["sha256"]:
            os.replace(part, final)
            return moved
        part.unlink()  # corrupt: start over once
    raise HubError(f"{entry['path']} copied from the head does not match its SHA-256 twice",
                   "check the fabric link; run spark-vllm download again")


def copy_from_head(manifest: dict, repo_id: str, node: str, on_bytes: Callable[[int], None] = lambda n: None) -> dict:
    """What a worker does: the head's snapshot into this node's cache, missing blobs only."""
    access = HubAccess.from_env(os.environ)
    base = repo_cache_dir(repo_id, access)
    blobs, snapshot = base / "blobs", base / "snapshots" / manifest["commit"]
    blobs.mkdir(parents=True, exist_ok=True)
    todo = [f for f in manifest["files"] if not (blobs / f["blob"]).exists()]
    total = sum(f["size"] for f in manifest["files"])
    on_bytes(total - sum(f["size"] for f in todo))
    require_disk(repo_id, sum(f["size"] for f in todo), os.statvfs(blobs).f_bavail * os.statvfs(blobs).f_frsize,
                 f"{node} ({access.cache_root()})")
    moved = sum(copy_blob(manifest["url"], f, blobs, on_bytes) for f in todo)
    for f in manifest["files"]:
        link = snapshot / f["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.relpath(blobs / f["blob"], link.parent))
    if manifest.get("pinned"):  # found by vLLM's --revision: a `main` already there stays
        write_main_once(base, manifest["commit"])
    else:
        (base / "refs").mkdir(exist_ok=True)
        (base / "refs" / "main").write_text(manifest["commit"])
    return {"node": node, "folder": str(snapshot), "commit": manifest["commit"], "total_bytes": total,
            "downloaded_bytes": moved, "source": "head"}
