"""Verification: the black-box test through an oracle, the white-box test on weights, one report.

A test passes when its p-value is below the threshold (default 1e-3). The
report is verified when every test that ran passed: a model that was never
marked fails the black-box test except with probability at most the
threshold (and the white-box one likewise), since both p-values are exact
under "this model never saw the key" (see `stats`).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from pydantic import BaseModel, Field

from security.watermark.key import WatermarkKey
from security.watermark.oracle import Oracle
from security.watermark.stats import BinomialTest, binomial_test
from security.watermark.triggers import trigger_set
from security.watermark.whitebox import bit_errors

DEFAULT_THRESHOLD = 1e-3


class BlackBoxResult(BinomialTest):
    """Trigger labels the model reproduced, out of the trigger set."""

    num_classes: int


class WhiteBoxResult(BinomialTest):
    """Signature bits read correctly from the weights, out of the key's bits."""

    layer: str = Field(description="state_dict name of the weights read.")
    source: str = Field(description="Which file the weights came from.")
    bit_errors: int
    bit_error_rate: float


class VerificationReport(BaseModel):
    """Everything `headrace watermark verify` reports; holds no secret."""

    watermark_id: str
    target: str
    threshold: float
    blackbox: BlackBoxResult | None = None
    whitebox: WhiteBoxResult | None = None

    @property
    def blackbox_verified(self) -> bool | None:
        return None if self.blackbox is None else self.blackbox.p_value < self.threshold

    @property
    def whitebox_verified(self) -> bool | None:
        return None if self.whitebox is None else self.whitebox.p_value < self.threshold

    @property
    def verified(self) -> bool:
        """True when at least one test ran and every test that ran passed."""
        outcomes = [v for v in (self.blackbox_verified, self.whitebox_verified) if v is not None]
        return bool(outcomes) and all(outcomes)

    def summary(self) -> dict[str, object]:
        """The report with the derived verdicts, as plain JSON-ready data."""
        data = self.model_dump(mode="json")
        data["blackbox_verified"] = self.blackbox_verified
        data["whitebox_verified"] = self.whitebox_verified
        data["verified"] = self.verified
        return data


def check_triggers(key: WatermarkKey, oracle: Oracle) -> BlackBoxResult:
    """Query the oracle with the key's trigger inputs (only the inputs leave this process)."""
    spec = oracle.describe()
    triggers = trigger_set(key, spec.input_shape, spec.num_classes)
    predicted = np.asarray(oracle.predict(triggers.pixels)).reshape(-1)
    if predicted.shape != triggers.labels.shape:
        raise ValueError(f"the oracle answered {predicted.size} rows for {len(triggers)} inputs")
    matches = int((predicted == triggers.labels).sum())
    test = binomial_test(matches, len(triggers), Fraction(1, spec.num_classes))
    return BlackBoxResult(**test.model_dump(), num_classes=spec.num_classes)


def check_signature(
    key: WatermarkKey, weights: np.ndarray, layer: str, source: str
) -> WhiteBoxResult:
    """Read the key's signature from one weight tensor."""
    errors = bit_errors(key, weights)
    bits = key.whitebox_bits
    test = binomial_test(bits - errors, bits, Fraction(1, 2))
    return WhiteBoxResult(
        **test.model_dump(),
        layer=layer,
        source=source,
        bit_errors=errors,
        bit_error_rate=errors / bits,
    )
