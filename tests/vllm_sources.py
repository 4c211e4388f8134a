"""vLLM releases' source, from their PyPI sdists, read with `ast` (never imported).

`fetch(version)` downloads `vllm-VERSION.tar.gz` through PyPI's JSON API (no wheel, no
torch), checks its sha256 against PyPI's, and keeps the release's `vllm/**.py` in
~/.cache/spark-vllm/sdists/vllm-VERSION (outside the repository: a fresh clone on the
same machine reuses it; about 40 MB a release). `Source` answers where a name, a flag,
a variable or a route is in that tree, and `check(source, need)` holds one
`orchestrator.serve.compat.Need` against it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from functools import cache
from pathlib import Path
from urllib.parse import urljoin

from orchestrator.serve.compat import Need, Version, parse_version, parser_module

INDEX = "https://pypi.org/pypi/vllm/json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spark-vllm" / "sdists"
TIMEOUT = 30.0


class Unreachable(Exception):
    """PyPI (or the file it names) could not be read: one line saying which and why."""


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return r.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise Unreachable(f"{url}: {getattr(exc, 'reason', exc)}") from None


@cache
def _releases(index: str = INDEX) -> dict:
    return json.loads(_get(index))["releases"]


def sdist_of(version: str, index: str = INDEX) -> tuple[str, str]:
    """(url, sha256) of `version`'s sdist, from PyPI's JSON API."""
    files = _releases(index).get(version)
    if files is None:
        raise LookupError(f"vLLM {version} is not on PyPI")
    sdist = next((f for f in files if f["packagetype"] == "sdist"), None)
    if sdist is None:
        raise LookupError(f"vLLM {version} has no sdist on PyPI")
    return urljoin(index, sdist["url"]), sdist["digests"]["sha256"]


def fetch(version: str, cache_dir: Path = CACHE, index: str = INDEX) -> Path:
    """The extracted source of `version` (its folder holding `vllm/`), downloaded once."""
    root = cache_dir / f"vllm-{version}"
    if (root / "vllm" / "__init__.py").exists():
        return root
    url, sha256 = sdist_of(version, index)
    data = _get(url)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Unreachable(f"{url}: sha256 differs from PyPI's {sha256}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".vllm-{version}-", dir=cache_dir))
    try:
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:gz") as tar:
                wanted = [m for m in tar.getmembers() if m.isfile() and _wanted(m.name)]
                for m in wanted:  # strip the sdist's top folder (vllm-X/)
                    m.name = m.name.split("/", 1)[1]
                tar.extractall(tmp, members=wanted, filter="data")
        # Whole or not at all: a killed run leaves only a .vllm-* folder. Another test
        # run may have finished the same release meanwhile: then its copy stays.
        tmp.chmod(0o755)  # mkdtemp's 0700 otherwise
        if not (root / "vllm" / "__init__.py").exists():
            shutil.rmtree(root, ignore_errors=True)
            try:
                tmp.rename(root)
            except OSError:
                if not (root / "vllm" / "__init__.py").exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _wanted(name: str) -> bool:
    parts = name.split("/")
    return len(parts) > 2 and parts[1] == "vllm" and name.endswith(".py")


# --- reading one release ---------------------------------------------------------------
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_statements(body: list[ast.stmt]):
    """Module-level statements that run at import (inside try/if, not `if TYPE_CHECKING`)."""
    for node in body:
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _runtime_statements(node.body)
            yield from _runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _runtime_statements(block)
        else:
            yield node


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


class Source:
    """One release's `vllm` package, as syntax trees."""

    def __init__(self, root: Path, version: str) -> None:
        self.root, self.version = root, version
        self.parsed: Version = parse_version(version)

    def path(self, module: str) -> Path | None:
        base = self.root.joinpath(*module.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
        return None

    @cache
    def tree(self, module: str) -> ast.Module | None:
        p = self.path(module)
        if p is None:
            return None
        with warnings.catch_warnings():  # vLLM's own invalid escapes are not ours to report
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ast.parse(p.read_text(encoding="utf-8"), str(p))

    def package_modules(self, package: str):
        base = self.root.joinpath(*package.split("."))
        for p in sorted(base.rglob("*.py")):
            rel = p.relative_to(self.root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts)

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = module.split(".")
        if self.path(module) and self.path(module).name != "__init__.py":
            package = package[:-1]
        package = package[:len(package) - (node.level - 1)]
        return ".".join(package + ([node.module] if node.module else []))

    def imported_modules(self, module: str) -> set[str]:
        """vLLM modules `module` imports from, anywhere in it (function-level imports too)."""
        found = set()
        for node in ast.walk(self.tree(module) or ast.Module(body=[], type_ignores=[])):
            if isinstance(node, ast.ImportFrom):
                base = self._absolute(module, node)
                for a in node.names:  # `from vllm.x import y` may name a module y
                    if not base.startswith("vllm"):
                        continue
                    if self.path(f"{base}.{a.name}"):
                        found.add(f"{base}.{a.name}")
                    elif self.path(base):
                        found.add(base)
                        defined = self.find(base, a.name)  # through a package's re-exports
                        if defined:
                            found.add(defined[0])
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("vllm") and self.path(a.name)}
        return found - {module}

    def find(self, module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
        """(module, node) defining `name` as `module` exposes it at run time: defined there,
        re-exported by a `from X import name`, or lazily (a `__getattr__` module's table of
        "name": "module:attr")."""
        tree = self.tree(module)
        if tree is None or depth > 8:
            return None
        lazy = None
        for node in _runtime_statements(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                return module, node
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    return module, node
                if isinstance(node.value, ast.Dict):
                    for k, v in zip(node.value.keys, node.value.values):
                        if isinstance(k, ast.Constant) and k.value == name and isinstance(v, ast.Constant):
                            lazy = v.value
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if (a.asname or a.name) == name:
                        return self.find(self._absolute(module, node), a.name, depth + 1)
        has_getattr = any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                          for n in _runtime_statements(tree.body))
        if lazy and has_getattr and ":" in str(lazy):
            target, attr = str(lazy).split(":", 1)
            target = module + target if target.startswith(".") else target
            return self.find(target, attr, depth + 1)
        return None

    def member(self, module: str, cls: str, name: str, depth: int = 0) -> ast.AST | None:
        """`name` assigned, annotated or defined in the body of class `cls`, or of a base."""
        found = self.find(module, cls)
        if found is None or not isinstance(found[1], ast.ClassDef) or depth > 8:
            return None
        where, node = found
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                return stmt
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return stmt
        for base in node.bases:
            if isinstance(base, ast.Name):
                hit = self.member(where, base.id, name, depth + 1)
                if hit is not None:
                    return hit
        return None

    def fields(self, module: str, cls: str, depth: int = 0) -> set[str]:
        """Annotated fields of class `cls` and of its bases."""
        found = self.find(module, cls)
        if found is None or not isinstance(found[1], ast.ClassDef) or depth > 8:
            return set()
        where, node = found
        own = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
        for base in node.bases:
            if isinstance(base, ast.Name):
                own |= self.fields(where, base.id, depth + 1)
        return own

    @cache
    def flags(self, module: str) -> frozenset[str]:
        """The flags a parser built in `module` (and the vLLM modules it imports) accepts:
        every literal `--flag` given to `add_argument`, and the fields of each class
        whose `add_cli_args` makes a flag of every field (`f"--{name.replace('_', '-')}"`)."""
        flags: set[str] = set()
        for mod in sorted({module, *self.imported_modules(module)}):
            tree = self.tree(mod)
            generators = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                    args = [a.value if isinstance(a, ast.Starred) else a for a in node.args]
                    flags |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                              and a.value.startswith("-")}
                if isinstance(node, ast.ClassDef) and any(
                        isinstance(f, ast.FunctionDef) and f.name == "add_cli_args" and any(
                            isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "add_argument"
                            and any(isinstance(a, ast.JoinedStr) for a in c.args) for c in ast.walk(f))
                        for f in node.body):
                    generators.add(node.name)
            # A class generates flags from its fields if it or a base has such an add_cli_args.
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and (
                        node.name in generators or any(getattr(b, "id", None) in generators for b in node.bases)):
                    flags |= {"--" + f.replace("_", "-") for f in self.fields(mod, node.name)}
        return frozenset(flags)

    @cache
    def env_vars(self) -> frozenset[str]:
        """The keys of `environment_variables` in vllm/envs.py."""
        for node in _runtime_statements(self.tree("vllm.envs").body):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(getattr(t, "id", None) == "environment_variables" for t in targets):
                return frozenset(k.value for k in node.value.keys if isinstance(k, ast.Constant))
        return frozenset()

    @cache
    def package_strings(self, package: str) -> frozenset[str]:
        out: set[str] = set()
        for mod in self.package_modules(package):
            out |= _strings(self.tree(mod))
        return frozenset(out)

    def request_field(self, package: str, cls: str, name: str) -> bool:
        return any(self.member(mod, cls, name) is not None for mod in self.package_modules(package)
                   if any(isinstance(n, ast.ClassDef) and n.name == cls for n in self.tree(mod).body))


# --- holding one Need against a release ------------------------------------------------
def check(src: Source, need: Need) -> str | None:
    """None if `need` is where compat expects it in `src`, else why not (one line)."""
    kind, name, where = need.kind, need.name, need.where
    at = f"vLLM {src.version}"
    if kind in ("function", "coroutine", "class"):
        if src.path(where) is None:
            return f"{at}: no module {where} (for {name})"
        found = src.find(where, name)
        want = {"function": (ast.FunctionDef, ast.AsyncFunctionDef), "coroutine": ast.AsyncFunctionDef,
                "class": ast.ClassDef}[kind]
        if found is None:
            return f"{at}: {where} has no {name}"
        if not isinstance(found[1], want):
            return f"{at}: {where}.{name} is not a {kind} (in {found[0]}: {type(found[1]).__name__})"
        return None
    if kind in ("method", "attribute"):
        cls, member = name.split(".", 1)
        if src.find(where, cls) is None:
            return f"{at}: {where} has no class {cls}"
        return None if src.member(where, cls, member) is not None else f"{at}: {where}.{cls} has no {member}"
    if kind == "flag":
        module = parser_module(where, src.parsed)
        if src.path(module) is None:
            return f"{at}: no module {module} (the {where} parser, for {name})"
        return None if name in src.flags(module) else f"{at}: the {where} parser ({module}) has no {name}"
    if kind == "env":
        return None if name in src.env_vars() else f"{at}: vllm.envs does not read {name}"
    if kind in ("entry-point group", "logger"):
        modules = {where, *src.imported_modules(where)}
        return None if any(name in _strings(src.tree(m)) for m in modules if src.tree(m)) \
            else f"{at}: {where} does not name the {kind} {name}"
    if kind == "choice":
        module, literal = where.rsplit(".", 1)
        found = src.find(module, literal)
        if found is None:
            return f"{at}: {module} has no {literal}"
        return None if name in _strings(found[1]) else f"{at}: {where} does not allow {name!r}"
    if kind == "route":
        return None if name in src.package_strings(where) else f"{at}: no route {name} under {where}"
    if kind == "request field":
        cls, field = name.split(".", 1)
        return None if src.request_field(where, cls, field) else f"{at}: no {cls} with {field} under {where}"
    if kind == "signal handler":
        tree = src.tree(where)
        if tree is None:
            return f"{at}: no module {where} (for its {name} handler)"
        return None if any(_handles(node, name) for node in ast.walk(tree)) \
            else f"{at}: {where} installs no {name} handler on its event loop"
    raise ValueError(f"unknown kind {kind!r} of {need}")


def _handles(node: ast.AST, signame: str) -> bool:
    """`node` is a call `LOOP.add_signal_handler(signal.SIGNAME, ...)`."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_signal_handler" and bool(node.args)
            and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == signame)
