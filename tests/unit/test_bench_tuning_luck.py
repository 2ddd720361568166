"""The luck benchmark's arithmetic: the expected best of a random search, and ranks."""

from __future__ import annotations

import itertools
import math
from statistics import mean

import pytest

from benchmarks.tuning_luck import expected_best_of, rank_of


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_expected_best_is_the_mean_over_every_choice_of_n(n: int) -> None:
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.5]
    by_enumeration = mean(min(choice) for choice in itertools.combinations(values, n))
    assert expected_best_of(values, n) == pytest.approx(by_enumeration)


def test_expected_best_of_one_is_the_mean_and_of_all_the_minimum() -> None:
    values = [0.4, 0.2, 0.6]
    assert expected_best_of(values, 1) == pytest.approx(0.4)
    assert expected_best_of(values, 3) == pytest.approx(0.2)


def test_failed_draws_count_only_when_every_draw_can_fail() -> None:
    values = [0.2, math.inf, 0.4, math.inf]
    by_enumeration = mean(min(c) for c in itertools.combinations([0.2, 9.0, 0.4, 9.0], 3))
    assert expected_best_of(values, 3) == pytest.approx(by_enumeration)  # a 3-draw always has one
    assert math.isinf(expected_best_of(values, 2))  # the two failures may be drawn together


def test_expected_best_refuses_a_budget_the_draws_cannot_give() -> None:
    with pytest.raises(ValueError, match="n must be 1 to 2"):
        expected_best_of([0.1, 0.2], 3)


def test_rank_counts_the_draws_below() -> None:
    draws = [0.5, 0.1, 0.3, 0.3]
    assert rank_of(0.1, draws) == 1
    assert rank_of(0.3, draws) == 2
    assert rank_of(0.05, draws) == 1
    assert rank_of(0.6, draws) == 5
