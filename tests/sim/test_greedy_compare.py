"""The comparison of served and single-process greedy answers, on plain values."""

from __future__ import annotations

import pytest

from orchestrator.sim.demo.greedy import NEAR_TIE, Divergence, Generation, compare, served_generations


def ref(prompt, tokens, margins):
    return Generation(tuple(prompt), tuple(tokens), tuple(margins))


def test_identical_answers_agree_and_report_the_smallest_margin():
    served = [Generation((1, 2), (5, 6, 7)), Generation((3,), (8,))]
    reference = [ref((1, 2), (5, 6, 7), (0.5, 0.2, 0.9)), ref((3,), (8,), (0.3,))]
    a = compare(served, reference)
    assert a.identical and (a.prompts, a.tokens, a.min_margin) == (2, 4, 0.2)


def test_first_difference_is_reported_with_the_reference_margin():
    a = compare([Generation((1,), (5, 9, 7))], [ref((1,), (5, 6, 7), (0.5, 0.25, 0.9))])
    assert a.divergences == (Divergence(prompt=0, position=1, served=9, reference=6, margin=0.25),)
    assert a.tokens == 1 and not a.only_near_ties(NEAR_TIE)


def test_a_difference_at_a_near_tie_is_told_apart():
    a = compare([Generation((1,), (5, 9))], [ref((1,), (5, 6), (0.5, NEAR_TIE / 10))])
    assert not a.identical and a.only_near_ties(NEAR_TIE)


def test_one_side_stopping_early_is_a_difference():
    a = compare([Generation((1,), (5,))], [ref((1,), (5, 6), (0.5, 0.5))])
    assert a.divergences == (Divergence(0, 1, None, 6, 0.5),)
    b = compare([Generation((1,), (5, 6))], [ref((1,), (5,), (0.5,))])
    assert b.divergences == (Divergence(0, 1, 6, None, None),) and not b.only_near_ties(NEAR_TIE)


def test_different_prompts_are_refused():
    with pytest.raises(ValueError, match="different prompts"):
        compare([Generation((1,), (5,))], [ref((2,), (5,), (0.5,))])


def test_client_answers_become_generations_in_order():
    answers = {"chat": {"prompt_token_ids": [1, 2], "token_ids": [3]},
               "completion": {"prompt_token_ids": [4], "token_ids": [5, 6]}}
    assert served_generations(answers) == [Generation((1, 2), (3,)), Generation((4,), (5, 6))]
