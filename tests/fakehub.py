"""A small stand-in for the Hugging Face Hub, for the real huggingface_hub client (HF_ENDPOINT).

It answers what the client asks (read from huggingface_hub 2.4's hf_api.py and
file_download.py): `GET /api/models/{repo}[/revision/{rev}]` (model_info, with
sizes), `GET /api/models/{repo}/tree/{rev}` (snapshot_download's listing), and
`HEAD`/`GET /{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` and
`Content-Length` (GET honours `Range`, for resumes). Errors as the Hub gives them:
401 + `X-Error-Code: RepoNotFound` for an unknown repository, 403 + `X-Error-Code:
GatedRepo` for a gated one without access, 401 + `X-Error-Message: Invalid credentials
in Authorization header` for a bad token. Run as a script inside a namespace:
`python tests/fakehub.py ROOT HOST PORT [BYTES_PER_S]`, ROOT holding one folder a repository
(`org--name/`, plus an empty file `.gated` to gate it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

GOOD_TOKEN = "hf_fake_good_token_0123456789"


class Hub:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        self.file_bytes = 0  # bytes of repository files sent (GET resolve)
        self.rate = 0.0  # bytes/s shared by all clients (0: unlimited), like a site's uplink
        self.lock = threading.Lock()

    def repo(self, repo_id: str) -> Path | None:
        folder = self.root / repo_id.replace("/", "--")
        return folder if folder.is_dir() else None

    def files(self, folder: Path) -> dict[str, Path]:
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()
                and p.name != ".gated"}

    @staticmethod
    def sha(repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()


class Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.route(body=False)

    def do_GET(self) -> None:
        self.route(body=True)

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body and self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self.send(status, json.dumps({"error": message}).encode(), headers)

    def route(self, body: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.hub.lock:
            self.hub.requests.append((self.command, path))
        if path == "/_stats":  # for the tests: how many bytes of files were served
            asked = sum(1 for _, p in self.hub.requests if p != "/_stats")  # every request but these
            return self.send(200, json.dumps({"file_bytes": self.hub.file_bytes, "requests": asked}).encode())
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        if token and token != GOOD_TOKEN:
            return self.error(401, None, "Invalid credentials in Authorization header")
        m = (re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
             or re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
             or re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path))
        if not m:
            return self.error(404, None, "Not Found")
        repo_id = m.group(1)
        folder = self.hub.repo(repo_id)
        if folder is None:
            return self.error(401, "RepoNotFound", "Repository not found")
        sha = Hub.sha(repo_id)
        gated = (folder / ".gated").exists()
        files = self.hub.files(folder)
        if path.startswith("/api/models/") and "/tree/" not in path:
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                    "gated": "manual" if gated else False, "tags": [], "downloads": 0, "likes": 0,
                    "siblings": [{"rfilename": p, "size": f.stat().st_size,
                                  "blobId": hashlib.sha1(f.read_bytes()).hexdigest()} for p, f in files.items()]}
            return self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if "/tree/" in path:
            tree = [{"type": "file", "oid": hashlib.sha1(f.read_bytes()).hexdigest(), "size": f.stat().st_size,
                     "path": p} for p, f in files.items()]
            return self.send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        if gated and token != GOOD_TOKEN:
            return self.error(403, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                                "to it and be authenticated to access it. Please log in.")
        f = files.get(m.group(3))
        if f is None:
            return self.error(404, "EntryNotFound", "Entry not found")
        data = f.read_bytes()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = 0, len(data) - 1
        if rng and body:
            start, end = int(rng.group(1)), int(rng.group(2) or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = end + 1 - start
        self.send_response(206 if rng and body else 200)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if body:
            self.stream(data[start:end + 1])

    def stream(self, data: bytes, chunk: int = 1 << 20) -> None:
        """Send, holding the Hub's shared rate: each chunk waits for its turn on the uplink."""
        for i in range(0, len(data), chunk):
            piece = data[i:i + chunk]
            if self.hub.rate:
                with self.hub.lock:
                    now = time.monotonic()
                    self.hub.free_at = max(getattr(self.hub, "free_at", now), now) + len(piece) / self.hub.rate
                    wait = self.hub.free_at - now
                time.sleep(wait)
            self.wfile.write(piece)
            with self.hub.lock:
                self.hub.file_bytes += len(piece)


def serve(root: Path, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, Hub]:
    """Start the fake Hub in a thread; returns (server, hub). `server.server_address` has the port."""
    hub = Hub(root)
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hub


@contextlib.contextmanager
def in_node(node, root: Path, port: int, tmp: Path, clean_env):
    """The fake Hub as a process inside a simulated Spark (reachable from the others over the
    veth); yields each of two nodes' environment: its own HF cache and run records, the Hub's
    address, no token (conftest plants one) and no offline flag."""
    hub = node.popen(sys.executable, str(Path(__file__)), str(root), node.ip, str(port),
                     stdout=subprocess.PIPE, text=True)
    try:
        assert hub.stdout.readline().startswith("fakehub on"), "the fake Hub did not start"
        envs = [clean_env(HF_ENDPOINT=f"http://{node.ip}:{port}", HF_HOME=str(tmp / f"hf{i}"),
                          SPARK_VLLM_RUN_DIR=str(tmp / f"run{i}"), HF_HUB_DISABLE_PROGRESS_BARS="1")
                for i in range(2)]
        for env in envs:
            for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
                env.pop(var, None)
        yield envs
    finally:
        hub.terminate()
        hub.wait(10)


def stats(node, port: int) -> dict:
    """The Hub's counters (bytes of files sent, requests), asked from inside `node`."""
    out = node.run(sys.executable, "-c", "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
                   f"'http://{node.ip}:{port}/_stats').read().decode())", capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


if __name__ == "__main__":
    root, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server, state = serve(Path(root), host, port)
    state.rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    print(f"fakehub on http://{host}:{server.server_address[1]}", flush=True)
    threading.Event().wait()
