"""Presets: a known model's `vllm serve` flags, each dropped where the user gave the same one.

"The user gave it" is decided by vLLM's own parser, built with every default None
(`engine.serve_parser(api, unset=None)`): `--max-model-len 4096`, `--max-model-len=4096`,
`--max_model_len 4096` all land in the dest `max_model_len`, so no spelling slips
through as string matching would let it. Pure functions over a parser and flag lists.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..serve.engine import parse_flags


def flag_groups(flags: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], ...]:
    """Split argv into one group a flag: `--x 1 --y` -> (("--x", "1"), ("--y",))."""
    groups: list[list[str]] = []
    for token in flags:
        if token.startswith("-") and not _is_number(token) or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return tuple(tuple(g) for g in groups)


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def given_dests(none_parser: argparse.ArgumentParser, flags: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The dests these flags set, read by a parser whose every default is None."""
    args = parse_flags(none_parser, "model", list(flags))
    return frozenset(dest for dest, value in vars(args).items() if value is not None and dest != "model")


@dataclass(frozen=True)
class PresetPlan:
    model: str
    taken: tuple[tuple[str, ...], ...] = ()  # preset flag groups applied
    overridden: tuple[tuple[str, ...], ...] = ()  # preset flag groups the user's own flag replaced

    @property
    def flags(self) -> list[str]:
        return [token for group in self.taken for token in group]

    def describe(self) -> str:
        parts = []
        if self.taken:
            parts.append(f"preset for {self.model}: {' '.join(self.flags)}")
        if self.overridden:
            parts.append("your flags replace: " + ", ".join(" ".join(g) for g in self.overridden))
        return "; ".join(parts)


def plan_preset(model: str, preset: tuple[str, ...], user_flags: list[str],
                none_parser: argparse.ArgumentParser) -> PresetPlan:
    """Each preset flag group is taken unless the user's flags set one of its dests."""
    if not preset:
        return PresetPlan(model)
    user = given_dests(none_parser, user_flags)
    taken, overridden = [], []
    for group in flag_groups(preset):
        (overridden if given_dests(none_parser, group) & user else taken).append(group)
    return PresetPlan(model, tuple(taken), tuple(overridden))


def with_preset(plan: PresetPlan, user_flags: list[str]) -> list[str]:
    """The flags vLLM gets: the preset's first, the user's after (and so winning anyway)."""
    return [*plan.flags, *user_flags]
