"""The Hugging Face Hub, for one node: what to fetch, the checks before any byte is
written, and the download into this node's cache.

Only the files vLLM loads are fetched: the top-level safetensors (or .bin/.pt when a
repository has none), configs, tokenizer and chat-template files, and remote code.
Folders such as `original/` (gpt-oss, Llama) hold a second copy of the weights that
vLLM never reads.

The token is this node's own (`HF_TOKEN`, else the stored `hf auth login`), read
here and handed only to huggingface_hub: it never travels between nodes and never
appears in a message.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import BadToken, GatedModel, HubError, NotEnoughDisk, OfflineNotCached, RepoNotFound
from ..settings import env_flag

CONFIG_PATTERNS = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py")
WEIGHT_PATTERNS = ("*.safetensors",)
FALLBACK_WEIGHT_PATTERNS = ("*.bin", "*.pt")
DISK_MARGIN = 1 << 30  # keep this much free after the download


def select_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """Pure: (weights, other files) vLLM loads, out of a repository's file list."""
    top = [p for p in paths if "/" not in p]

    def matching(patterns):
        return [p for p in top if any(fnmatch.fnmatch(p, pat) for pat in patterns)]

    weights = matching(WEIGHT_PATTERNS) or [p for p in matching(FALLBACK_WEIGHT_PATTERNS)
                                            if not p.startswith(("training_args", "optimizer"))]
    return sorted(weights), sorted(set(matching(CONFIG_PATTERNS)) - set(weights))


@dataclass(frozen=True)
class RepoPlan:
    """What one repository at one commit asks of a node's disk."""

    repo_id: str
    commit: str
    files: tuple[tuple[str, int], ...]  # (path, bytes)
    weights_bytes: int
    from_cache: bool = False  # offline, or the Hub unreachable: the cached snapshot, nothing to fetch
    pinned: bool = False  # a revision was asked for (a recipe's lock): fetched by commit, `refs/main` untouched

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def patterns(self) -> list[str]:
        return [path for path, _ in self.files]

    def to_json(self) -> dict:
        return {"repo_id": self.repo_id, "commit": self.commit, "files": len(self.files),
                "total_bytes": self.total_bytes, "weights_bytes": self.weights_bytes}


@dataclass(frozen=True)
class HubAccess:
    """How this node reaches the Hub: read once from the environment."""

    endpoint: str | None = None  # HF_ENDPOINT (tests: a local server)
    offline: bool = False  # HF_HUB_OFFLINE
    cache_dir: str | None = None  # HF_HUB_CACHE / HF_HOME, else huggingface_hub's default

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "HubAccess":
        cache = environ.get("HF_HUB_CACHE") or (
            os.path.join(environ["HF_HOME"], "hub") if environ.get("HF_HOME") else None)
        return cls(environ.get("HF_ENDPOINT") or None, env_flag(environ.get("HF_HUB_OFFLINE")), cache)

    def cache_root(self) -> Path:
        from huggingface_hub import constants

        return Path(self.cache_dir or constants.HF_HUB_CACHE)


def node_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` stored on this node."""
    from huggingface_hub import get_token

    return get_token()


def unreachable(exc: BaseException) -> bool:
    """No answer at all from the Hub (huggingface_hub's HTTP client: a TransportError)."""
    return any(k.__name__ in ("TransportError", "OfflineModeIsEnabled") for k in type(exc).__mro__)


def hub_error(exc: Exception, repo_id: str, has_token: bool) -> HubError:
    """One place from huggingface_hub's exceptions to ours, each with the next step."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    page = f"https://huggingface.co/{repo_id}"
    if isinstance(exc, GatedRepoError):
        return GatedModel(f"{repo_id} is gated: this account has no access to its files",
                          f"request access at {page}, then set HF_TOKEN (or `hf auth login`) on every Spark")
    if isinstance(exc, RepositoryNotFoundError):
        return RepoNotFound(f"no model {repo_id} on the Hugging Face Hub"
                            + ("" if has_token else " (or it is private and no token is set)"),
                            "check the name (spark-vllm models lists known ones)"
                            + ("" if has_token else "; for a private model set HF_TOKEN"))
    if isinstance(exc, LocalEntryNotFoundError):
        return OfflineNotCached(f"{repo_id} is not in this node's Hugging Face cache and the Hub cannot be reached",
                                f"connect the Spark, or fetch it first: spark-vllm download {repo_id}")
    if unreachable(exc):
        return OfflineNotCached(f"the Hugging Face Hub cannot be reached ({type(exc).__name__}) and {repo_id} is not "
                                "in this node's cache", "check the network (HF_ENDPOINT), or copy the model here")
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status == 401:
        return BadToken("the Hugging Face token was refused (401 invalid credentials)",
                        "make a new token at https://huggingface.co/settings/tokens and set HF_TOKEN")
    if isinstance(exc, HfHubHTTPError) and status == 403:
        return BadToken(f"the Hugging Face token may not read {repo_id} (403)",
                        "give the token read access to this repository")
    return HubError(f"the Hugging Face Hub failed for {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                    "retry; set HF_HUB_OFFLINE=1 to use only what is cached")


def plan_repo(repo_id: str, access: HubAccess, token: str | None, revision: str | None = None) -> RepoPlan:
    """The Hub's file list and sizes, and one file's metadata: access problems (gated,
    bad token, unknown repository) show here, before any byte is written. `revision`:
    that commit (a lock's), else `main`."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    if access.offline:
        return cached_plan(repo_id, access, revision)
    try:
        info = HfApi(endpoint=access.endpoint, token=token).model_info(repo_id, revision=revision,
                                                                        files_metadata=True)
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or ()}
        weights, other = select_files(list(sizes))
        probe = "config.json" if "config.json" in sizes else (weights + other)[0]
        get_hf_file_metadata(hf_hub_url(repo_id, probe, revision=info.sha, endpoint=access.endpoint), token=token)
    except Exception as exc:
        if unreachable(exc) and cached_snapshot(repo_id, access, revision):
            return cached_plan(repo_id, access, revision)
        raise hub_error(exc, repo_id, token is not None) from None
    files = tuple((p, sizes[p]) for p in weights + other)
    return RepoPlan(repo_id, info.sha, files, sum(sizes[p] for p in weights), pinned=revision is not None)


def cached_plan(repo_id: str, access: HubAccess, revision: str | None = None) -> RepoPlan:
    """Offline: the plan from the snapshot this node's cache holds for `main`.
    (Read directly: huggingface_hub 2.4's offline snapshot_download refuses a snapshot
    that lacks files vLLM never needs, such as `original/`.)"""
    folder = cached_snapshot(repo_id, access, revision)
    if folder is None:
        at = f" at {revision[:12]}" if revision else ""
        raise OfflineNotCached(f"{repo_id}{at} is not in this node's Hugging Face cache and HF_HUB_OFFLINE is set",
                               f"fetch it first, online: spark-vllm download {repo_id}")
    paths = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    weights, other = select_files(paths)
    files = tuple((p, (folder / p).stat().st_size) for p in weights + other)
    return RepoPlan(repo_id, folder.name, files, sum(s for p, s in files if p in weights), from_cache=True,
                    pinned=revision is not None)


def cached_snapshot(repo_id: str, access: HubAccess, revision: str | None = None) -> Path | None:
    """The cached snapshot of `revision` (a commit), else of `main`, that holds a config.json, or None."""
    base = repo_cache_dir(repo_id, access)
    try:
        folder = base / "snapshots" / (revision or (base / "refs" / "main").read_text().strip())
    except OSError:
        return None
    return folder if (folder / "config.json").exists() else None


def missing_bytes(plan: RepoPlan, access: HubAccess) -> int:
    """Bytes of the plan this node's cache does not hold yet."""
    from huggingface_hub import try_to_load_from_cache

    return sum(size for path, size in plan.files
               if not isinstance(try_to_load_from_cache(plan.repo_id, path, cache_dir=access.cache_dir,
                                                        revision=plan.commit), str))


def check_disk(plan: RepoPlan, access: HubAccess, node: str = "this node") -> int:
    """NotEnoughDisk unless the cache's file system holds what is missing, plus a margin."""
    root = access.cache_root()
    probe = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    return require_disk(plan.repo_id, missing_bytes(plan, access), shutil.disk_usage(probe).free, f"{node} ({root})")


def require_disk(repo_id: str, need: int, free: int, where: str) -> int:
    """Pure: NotEnoughDisk when `need` bytes plus a margin exceed `free`; else `need`."""
    if need and need + DISK_MARGIN > free:
        raise NotEnoughDisk(f"{repo_id} needs {need / 1e9:.1f} GB more on {where} but {free / 1e9:.1f} GB are free",
                            "free disk space, or point HF_HOME at a larger disk")
    return need


def repo_cache_dir(repo_id: str, access: HubAccess) -> Path:
    return access.cache_root() / ("models--" + repo_id.replace("/", "--"))


def cached_bytes(repo_id: str, access: HubAccess) -> int:
    """Bytes in this repository's cache blobs, partial downloads included (for progress)."""
    blobs = repo_cache_dir(repo_id, access) / "blobs"
    try:
        return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file())
    except OSError:
        return 0


def download(plan: RepoPlan, access: HubAccess, token: str | None) -> str:
    """The plan's files at its commit into this node's cache; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    if plan.from_cache:
        return str(cached_snapshot(plan.repo_id, access, plan.commit if plan.pinned else None))
    try:
        # The branch, not the planned commit: only then does the cache get the `refs/main`
        # that vLLM (and an offline run) resolve the repository id through. Pinned (a
        # lock), the commit: vLLM is then given `--revision`.
        folder = snapshot_download(plan.repo_id, allow_patterns=plan.patterns,
                                   revision=plan.commit if plan.pinned else None,
                                   cache_dir=access.cache_dir, endpoint=access.endpoint, token=token)
    except Exception as exc:
        raise hub_error(exc, plan.repo_id, token is not None) from None
    if plan.pinned:
        write_main_once(repo_cache_dir(plan.repo_id, access), plan.commit)
    return folder


def write_main_once(base: Path, commit: str) -> None:
    """A pinned commit becomes `refs/main` only where the cache has no `main` yet (so that
    the repository id alone resolves offline); a `main` already there is left as it is."""
    ref = base / "refs" / "main"
    if not ref.exists():
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def fetch_here(repo_id: str, access: HubAccess, node: str,
               on_plan: Callable[[RepoPlan, int], None] = lambda plan, missing: None,
               revision: str | None = None) -> dict:
    """Plan, check the disk, download: what one node does. Returns a small report."""
    token = node_token()
    plan = plan_repo(repo_id, access, token, revision)
    missing = check_disk(plan, access, node)
    on_plan(plan, missing)
    folder = download(plan, access, token)  # also when all is cached: it checks and writes the ref
    return {"node": node, "folder": folder, "commit": plan.commit, "total_bytes": plan.total_bytes,
            "downloaded_bytes": missing, "pinned": plan.pinned}
