"""Does tensor parallelism over Ray compute what one process computes?

The served side gives, per request, the prompt's token ids and the greedy answer's
token ids (vLLM's `return_token_ids`). The reference runs the same prompt ids
through vLLM's own offline engine in one process (`vllm.LLM`, no Ray, no TP) with
the same engine flags, and records at each step how far its top token led the
runner-up (top-1 minus top-2 logprob: the logit margin). `compare` then finds the
first token where the two differ, if any.

The margins say whether a difference means anything: sharded and unsharded sums
round differently, so where the reference's margin is within that rounding (a
near tie) either token is a right answer; a difference at a clear margin means the
sharded engine computed something else.

`python -m orchestrator.sim.demo.greedy REQUEST.json RESULT.json` is the reference's
process (vLLM spawns its engine core, hence the `__main__` guard; vLLM logs on
stdout, hence files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ...errors import SimulationError

# Both sides compute in float32. In bf16 vLLM's CPU logits keep 8 bits of mantissa,
# so exact ties are common (SmolLM2's haiku: top-2 margin 0.0 at 4 of 32 tokens) and
# TP 2 may break them the other way. In float32 sharded and unsharded sums differ by
# about 1e-5, far below the margins: equal tokens are then the expected outcome.
EXACT_FLAGS = ("--dtype", "float32")
# A difference where the reference's top two were closer than this is a near tie,
# not a wrong computation (float32 rounding is two orders of magnitude smaller).
NEAR_TIE = 1e-3


@dataclass(frozen=True)
class Generation:
    """One greedy answer: the prompt's ids and the generated ids (served or reference)."""

    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    margins: tuple[float, ...] = ()  # reference only: top-1 minus top-2 logprob per token


@dataclass(frozen=True)
class Divergence:
    prompt: int  # index of the prompt
    position: int  # first generated token that differs
    served: int | None  # None: that side had already stopped
    reference: int | None
    margin: float | None  # the reference's margin there (None past its end)


@dataclass(frozen=True)
class Agreement:
    prompts: int
    tokens: int  # reference tokens compared (up to each first divergence)
    min_margin: float  # the smallest reference margin among them
    divergences: tuple[Divergence, ...]

    @property
    def identical(self) -> bool:
        return not self.divergences

    def only_near_ties(self, tolerance: float) -> bool:
        """Every divergence sits where the reference's top two were within `tolerance`."""
        return all(d.margin is not None and d.margin <= tolerance for d in self.divergences)

    def to_json(self) -> dict:
        return {"prompts": self.prompts, "tokens": self.tokens, "identical": self.identical,
                "min_margin": round(self.min_margin, 4),
                "divergences": [d.__dict__ for d in self.divergences]}


def compare(served: Sequence[Generation], reference: Sequence[Generation]) -> Agreement:
    """Token by token, up to the first difference of each prompt.

    Raises:
        ValueError: the two sides do not hold the same prompts.
    """
    if [s.prompt_token_ids for s in served] != [r.prompt_token_ids for r in reference]:
        raise ValueError("the served and reference generations are for different prompts")
    compared, margins, divergences = 0, [], []
    for i, (s, r) in enumerate(zip(served, reference)):
        for pos in range(max(len(s.token_ids), len(r.token_ids))):
            a = s.token_ids[pos] if pos < len(s.token_ids) else None
            b = r.token_ids[pos] if pos < len(r.token_ids) else None
            margin = r.margins[pos] if pos < len(r.margins) else None
            if a != b:
                divergences.append(Divergence(i, pos, a, b, margin))
                break
            compared += 1
            if margin is not None:
                margins.append(margin)
    return Agreement(len(served), compared, min(margins, default=float("inf")), tuple(divergences))


def served_generations(answers: Mapping[str, Mapping]) -> list[Generation]:
    """The client's JSON (`orchestrator.sim.demo.client`), in its order, as generations."""
    return [Generation(tuple(a["prompt_token_ids"]), tuple(a["token_ids"])) for a in answers.values()]


def hold_against_reference(model: str, answers: Mapping[str, Mapping], max_tokens: int,
                           engine_flags: Sequence[str], workdir: Path, python: str = sys.executable,
                           env: Mapping[str, str] | None = None) -> Agreement:
    """The served greedy answers against single-process generation of the same prompt ids."""
    served = served_generations(answers)
    reference = reference_generate(model, [g.prompt_token_ids for g in served], max_tokens, engine_flags,
                                   workdir, python=python, env=env)
    return compare(served, reference)


# --- the reference: vLLM offline, one process ------------------------------------------
def reference_generate(model: str, prompts: Sequence[Sequence[int]], max_tokens: int,
                       engine_flags: Sequence[str], workdir: Path, python: str = sys.executable,
                       env: Mapping[str, str] | None = None, timeout: float = 600.0) -> list[Generation]:
    """Greedy generation of `prompts` (token ids) by vLLM's offline engine in a subprocess.

    `engine_flags` are `vllm serve` engine flags (e.g. the simulation's
    `--max-model-len 512 ...`), parsed by vLLM's own parser as the server does.

    Raises:
        SimulationError: the engine failed or took longer than `timeout`.
    """
    request, result = workdir / "reference-request.json", workdir / "reference-result.json"
    log = workdir / "reference.log"
    request.write_text(json.dumps({"model": model, "prompts": [list(p) for p in prompts],
                                   "max_tokens": max_tokens, "engine_flags": list(engine_flags)}))
    result.unlink(missing_ok=True)
    try:
        with open(log, "w") as out:
            code = subprocess.run([python, "-m", "orchestrator.sim.demo.greedy", str(request), str(result)],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=dict(env) if env is not None else None).returncode
    except subprocess.TimeoutExpired as e:
        raise SimulationError(f"single-process generation took over {timeout:g} s", f"log: {log}") from e
    if code != 0 or not result.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-10:])
        raise SimulationError(f"single-process generation failed (exit {code}):\n{tail}", f"log: {log}")
    return [Generation(tuple(g["prompt_token_ids"]), tuple(g["token_ids"]), tuple(g["margins"]))
            for g in json.loads(result.read_text())]


def _generate(request: dict) -> list[dict]:
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.inputs import TokensPrompt

    from ...serve.compat import load_vllm_api

    parser = EngineArgs.add_cli_args(load_vllm_api().FlexibleArgumentParser())
    args = vars(parser.parse_args(["--model", request["model"], *request["engine_flags"]]))
    llm = LLM(**args)
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], logprobs=2)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in request["prompts"]], params, use_tqdm=False)
    results = []
    for prompt, out in zip(request["prompts"], outs):
        gen = out.outputs[0]
        margins = []
        for step in gen.logprobs or []:
            top = sorted((lp.logprob for lp in step.values()), reverse=True)
            margins.append(top[0] - top[1] if len(top) > 1 else float("inf"))
        results.append({"prompt_token_ids": prompt, "token_ids": list(gen.token_ids), "margins": margins})
    return results


if __name__ == "__main__":
    os.environ.pop("SPARK_VLLM_SIMULATE", None)  # one plain CPU process: no simulated platform
    _request = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(_generate(_request)))
