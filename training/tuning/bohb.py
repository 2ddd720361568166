"""NNI 3.0's BOHB advisor, mended; NNI's dispatcher process loads it by class name.

Two faults of NNI 3.0's `BOHB` (with the ConfigSpace 1.x installed here) are
mended, and nothing else is changed:

1. BOHB names its parameters `"<bracket>_<round>_<n>"`, but the `Recoverable`
   base class compares every parameter id with an int
   (`param_id <= self.recovered_max_param_id`), so the first result a trial
   reported raised `TypeError` and the dispatcher died (NNI issue #5263): no
   trial came after those already handed out, and the experiment sat idle.
   Here an id that is not an int is never "created in a previous experiment"
   (BOHB's string ids are never recovered anyway).
2. When none of its KDE candidates gets a finite score (or none is drawn),
   the config generator falls back to a random configuration as a plain dict,
   and `get_config` then calls `.get_dictionary()` on it (AttributeError). The
   generator used here hands that sample back as a `ConfigSpace.Configuration`.

ConfigSpace 1.x has no quantised floats, so NNI's BOHB cannot build
`quniform`/`qloguniform` entries; `TuneSettings` refuses them for BOHB up front.
"""

from __future__ import annotations

from typing import Any

import ConfigSpace
from nni.algorithms.hpo.bohb_advisor import bohb_advisor as _bohb_module
from nni.algorithms.hpo.bohb_advisor.bohb_advisor import BOHB
from nni.algorithms.hpo.bohb_advisor.config_generator import CG_BOHB


class _ConfigGenerator(CG_BOHB):
    """NNI's KDE config generator whose random fallback is a `Configuration`, as
    `get_config` expects."""

    def sample_from_largest_budget(self, info_dict: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        sample, info_dict = super().sample_from_largest_budget(info_dict)
        if isinstance(sample, dict):
            sample = ConfigSpace.Configuration(self.configspace, values=sample)
        return sample, info_dict


class HeadraceBOHB(BOHB):
    """NNI's `BOHB` advisor with the two mends above."""

    def is_created_in_previous_exp(self, param_id: Any) -> bool:
        return isinstance(param_id, int) and bool(super().is_created_in_previous_exp(param_id))

    def handle_initialize(self, data: Any) -> None:
        original = _bohb_module.CG_BOHB
        _bohb_module.CG_BOHB = _ConfigGenerator
        try:
            super().handle_initialize(data)
        finally:
            _bohb_module.CG_BOHB = original
