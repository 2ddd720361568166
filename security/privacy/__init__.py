"""Differentially private training (DP-SGD with Opacus).

`config` holds the settings (`PrivacyConfig`, the `privacy` section of a
training config or job spec) and the statement of what distributed training
supports (`check_distributed_privacy`); it imports pydantic only. `engine` is
the one wrapper around Opacus (`PrivateTraining`); import it only where a
private run starts, as Opacus takes seconds to import.

Imports: only `headrace.errors` from this project.
"""

from security.privacy.config import PrivacyConfig, PrivacySpent, check_distributed_privacy

__all__ = ["PrivacyConfig", "PrivacySpent", "check_distributed_privacy"]
