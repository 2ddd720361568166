"""The statistical test behind every watermark claim: an exact binomial tail.

Under the null hypothesis (the model never saw the key), each of `trials`
checks agrees with the key independently with probability `chance`: a trigger
label is uniform over K classes and independent of the trigger input and of
the model, so whatever the model answers, it matches with probability exactly
1/K; a signature bit is a fair coin, so a bit read from unmarked weights
matches with probability 1/2. The p-value is P[Binomial(trials, chance) >= matches],
computed exactly with integers, and with its log10 so that values below
float's range (1e-308) are still reported.
"""

from __future__ import annotations

import math
from fractions import Fraction

from pydantic import BaseModel, Field


class BinomialTest(BaseModel):
    """The outcome of one test: how many checks matched and how likely that is by chance."""

    matches: int = Field(ge=0)
    trials: int = Field(ge=1)
    chance_rate: float = Field(description="Probability of one match by chance.")
    p_value: float = Field(description="P[Binomial(trials, chance_rate) >= matches].")
    log10_p_value: float


def binomial_tail(matches: int, trials: int, chance: Fraction) -> tuple[float, float]:
    """(p, log10 p) with p = P[Binomial(trials, chance) >= matches], exact."""
    if not 0 <= matches <= trials or trials < 1:
        raise ValueError(f"need 0 <= matches <= trials and trials >= 1, got {matches}/{trials}")
    if not 0 < chance < 1:
        raise ValueError(f"chance must lie strictly between 0 and 1, not {chance}")
    a, b = chance.numerator, chance.denominator
    numerator = sum(
        math.comb(trials, k) * a**k * (b - a) ** (trials - k) for k in range(matches, trials + 1)
    )
    log10_p = math.log10(numerator) - trials * math.log10(b)
    p = float(Fraction(numerator, b**trials))
    return p, min(0.0, log10_p)


def binomial_test(matches: int, trials: int, chance: Fraction) -> BinomialTest:
    """`binomial_tail` as a report."""
    p, log10_p = binomial_tail(matches, trials, chance)
    return BinomialTest(
        matches=matches,
        trials=trials,
        chance_rate=float(chance),
        p_value=p,
        log10_p_value=log10_p,
    )
