"""The v1 recipe format, pure: YAML text -> a Recipe; a Recipe and the runner's
overrides -> what `vllm serve` gets (model, flags, env), and the preset of a known
model -> a recipe.

The `command` is a `vllm serve MODEL \\ ...` template that Python's `str.format` fills
from `defaults`, the overrides (`--port`, `--host`, `--tp`, `--gpu-mem`,
`--max-model-len`) and `model`; `{{`/`}}` are literal braces (JSON flags). An override
whose parameter the template does not use becomes the vLLM flag it stands for, after
the template's (the last one wins in vLLM's parser). `mods` and `build_args` patch and
build eugr's image: they cannot apply to the vLLM installed here and are reported.
"""

from __future__ import annotations

import re
import shlex
import string
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import RecipeError

VERSION = "1"
# override parameter -> the `vllm serve` flag it sets when the template leaves it out
OVERRIDE_FLAGS = {
    "port": "--port",
    "host": "--host",
    "tensor_parallel": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_model_len": "--max-model-len",
}


@dataclass(frozen=True)
class Recipe:
    source: str  # the file, for messages
    name: str
    command: str
    model: str = ""
    description: str = ""
    container: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    cluster_only: bool = False
    solo_only: bool = False
    mods: tuple[str, ...] = ()
    build_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """What would run: the model, vLLM's flags, the environment of every node."""

    recipe: Recipe
    model: str
    flags: tuple[str, ...]
    env: Mapping[str, str]
    params: Mapping[str, Any]  # what the template was filled with

    def not_applied(self) -> list[str]:
        """One line a thing of the recipe that spark-vllm does not apply."""
        r, lines = self.recipe, []
        if r.mods:
            lines.append(f"recipe {r.name}: mods not applied ({', '.join(r.mods)}): they patch the image of "
                         "eugr/spark-vllm-docker; spark-vllm runs this machine's vLLM as it is")
        if r.build_args:
            lines.append(f"recipe {r.name}: build_args not applied ({', '.join(r.build_args)}): spark-vllm "
                         "builds no image")
        if r.container:
            lines.append(f"recipe {r.name}: container {r.container} not used: spark-vllm serves with the vLLM "
                         "installed where it runs (its container, if any)")
        return lines

    def nodes_rule(self) -> str:
        r = self.recipe
        return "2 or more (cluster_only)" if r.cluster_only else "1 (solo_only)" if r.solo_only else "any"

    def to_json(self) -> dict:
        r = self.recipe
        return {"recipe": r.name, "file": r.source, "description": r.description, "model": self.model,
                "flags": list(self.flags), "env": dict(self.env), "nodes": self.nodes_rule(),
                "cluster_only": r.cluster_only, "solo_only": r.solo_only, "params": dict(self.params),
                "not_applied": self.not_applied()}


def _bad(source: str, what: str, hint: str = "see docs/recipes.md for the v1 format") -> RecipeError:
    return RecipeError(f"recipe {source}: {what}", hint)


def _env_value(value: Any) -> str:
    """YAML gives numbers and booleans: the environment holds their plain text."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Pure: YAML text -> Recipe, or RecipeError naming the file and the fault."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise _bad(source, f"is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, Mapping):
        raise _bad(source, "is not a YAML mapping of recipe fields")
    version = str(data.get("recipe_version", VERSION))
    if version != VERSION:
        raise _bad(source, f"recipe_version {version!r} is not supported (only \"1\")")
    command = data.get("command")
    if not isinstance(command, str) or not command.strip():
        raise _bad(source, "has no command (a `vllm serve MODEL ...` template)")
    defaults, env = data.get("defaults") or {}, data.get("env") or {}
    if not isinstance(defaults, Mapping) or not isinstance(env, Mapping):
        raise _bad(source, "defaults and env must be mappings")
    return Recipe(
        source=source, name=str(data.get("name") or source), command=command,
        model=str(data.get("model") or ""), description=str(data.get("description") or "").strip(),
        container=str(data.get("container") or ""), defaults=dict(defaults),
        env={str(k): _env_value(v) for k, v in env.items()},
        cluster_only=bool(data.get("cluster_only", False)), solo_only=bool(data.get("solo_only", False)),
        mods=_strings(data.get("mods")), build_args=_strings(data.get("build_args")),
    )


def template_fields(command: str, source: str = "<recipe>") -> set[str]:
    """The {param} names a template uses (`{{` and `}}` are no fields)."""
    try:
        return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(command)
                if name is not None}
    except ValueError as exc:
        raise _bad(source, f"the command template cannot be filled: {exc}",
                   "write literal braces as {{ and }}") from None


def resolve(recipe: Recipe, overrides: Mapping[str, Any] | None = None,
            extra: tuple[str, ...] | list[str] = ()) -> Resolved:
    """Pure: fill the template, split it as a shell would, check it is `vllm serve`,
    and append the overrides the template leaves out, then `extra` as it is."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    params = {**recipe.defaults, **given}
    if recipe.model:
        params.setdefault("model", recipe.model)
    used = template_fields(recipe.command, recipe.source)
    unknown = sorted(used - set(params))
    if unknown:
        raise _bad(recipe.source, "the command uses " + ", ".join("{" + u + "}" for u in unknown)
                   + " but neither defaults nor the overrides set it",
                   "add it to defaults, or write a literal brace as {{ or }}")
    try:
        filled = recipe.command.format(**params)
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise _bad(recipe.source, f"the command template cannot be filled: {exc}",
                   "write literal braces as {{ and }}") from None
    try:
        tokens = shlex.split(re.sub(r"\\\r?\n", " ", filled))
    except ValueError as exc:
        raise _bad(recipe.source, f"the command cannot be split as a shell would: {exc}") from None
    if tokens[:2] != ["vllm", "serve"]:
        raise _bad(recipe.source, f"the command is not `vllm serve ...` (it starts {' '.join(tokens[:2])!r})",
                   "spark-vllm runs vLLM's OpenAI server only")
    model, flags = _split_model(tokens[2:])
    model = model or recipe.model
    if not model:
        raise _bad(recipe.source, "names no model (neither `model:` nor `vllm serve MODEL`)")
    appended = [tok for key, flag in OVERRIDE_FLAGS.items() if key in given and key not in used
                for tok in (flag, str(given[key]))]
    return Resolved(recipe, model, tuple([*flags, *appended, *extra]), dict(recipe.env), params)


def _split_model(args: list[str]) -> tuple[str | None, list[str]]:
    """`MODEL --flags` or `--model MODEL --flags` -> (MODEL, flags)."""
    if args and not args[0].startswith("-"):
        return args[0], args[1:]
    for i, tok in enumerate(args):
        if tok == "--model" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2:]
        if tok.startswith("--model="):
            return tok.split("=", 1)[1], args[:i] + args[i + 1:]
    return None, list(args)


def check_nodes(resolved: Resolved, nodes: int) -> None:
    r = resolved.recipe
    if r.cluster_only and nodes < 2:
        raise RecipeError(f"recipe {r.name} is cluster_only but --nodes is {nodes}",
                          "serve it on two Sparks: --nodes 2 (the default)")
    if r.solo_only and nodes > 1:
        raise RecipeError(f"recipe {r.name} is solo_only but --nodes is {nodes}", "pass --nodes 1")


def unknown_flag(message: str) -> str | None:
    """The first flag of vLLM's `unrecognized arguments: ...` complaint, else None."""
    m = re.search(r"unrecognized arguments?: (\S+)", message)
    return m.group(1) if m else None


def mod_only_error(resolved: Resolved, message: str) -> RecipeError | None:
    """vLLM's parser rejected a flag of a recipe with mods: the flag most likely comes
    with one of them. The error names the recipe, the flag and the mods."""
    flag = unknown_flag(message)
    r = resolved.recipe
    if flag is None or not r.mods:
        return None
    return RecipeError(f"recipe {r.name}: vLLM here does not know {flag}; it exists only with the recipe's mod "
                       f"{', '.join(r.mods)}, which spark-vllm does not apply",
                       f"drop {flag} from the recipe's command (or pass it after -- with a vLLM that has it)")


def preset_recipe(entry) -> dict:
    """A matrix row (models.matrix.ModelEntry) as a v1 recipe that `serve --recipe` runs."""
    lines = ["vllm serve {model}", "--host {host}", "--port {port}"]
    preset = [f.replace("{", "{{").replace("}", "}}") for f in entry.preset]  # literal in the template
    i = 0
    while i < len(preset):  # one flag (and its value) a line, as the community writes them
        if i + 1 < len(preset) and not preset[i + 1].startswith("--"):
            lines.append(f"{preset[i]} {shlex.quote(preset[i + 1])}")
            i += 2
        else:
            lines.append(preset[i])
            i += 1
    recipe = {
        "recipe_version": VERSION,
        "name": entry.handle.split("/")[-1].lower(),
        "description": f"{entry.name} ({entry.quantization}), from spark-vllm's support matrix"
                       + (f": {entry.note}" if entry.note else ""),
        "model": entry.handle,
        "cluster_only": entry.nodes > 1,
        "defaults": {"host": "0.0.0.0", "port": 8000},
        "env": {},
        "command": " \\\n  ".join(lines) + "\n",
    }
    return recipe


def dump_recipe(recipe: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):  # the command as a readable block
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(recipe, Dumper=Dumper, sort_keys=False, default_flow_style=False)
