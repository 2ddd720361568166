"""NNI's GP tuner, mended for the SciPy installed here; NNI's tuner process loads it by class name.

NNI 3.0's GP tuner maximises its acquisition function with
`scipy.optimize.minimize(fun, x0.reshape(1, -1))` and reads `res.fun[0]`.
SciPy 1.11+ refuses a two-dimensional `x0` ("'x0' must only have one
dimension") and expects a scalar objective, so after its cold-start trials the
tuner process crashed and the experiment ended in ERROR. `HeadraceGPTuner`
hands the GP helper a `minimize` that flattens `x0`, returns the objective as a
float and gives `fun` back as a one-element array, only while it generates
parameters. NNI's tuner also takes no seed: it draws from a `RandomState()`
seeded by the OS, so two runs of one job suggested different trials.
`HeadraceGPTuner` takes a `seed` class argument, as NNI's TPE and Random do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize
from nni.algorithms.hpo.gp_tuner import GPTuner
from nni.algorithms.hpo.gp_tuner import util as _gp_util


def _minimize_flat(
    fun: Callable[[np.ndarray], Any], x0: np.ndarray, **kwargs: Any
) -> scipy.optimize.OptimizeResult:
    """`scipy.optimize.minimize` as NNI's GP helper expects it to behave."""
    result = scipy.optimize.minimize(lambda x: float(np.ravel(fun(x))[0]), np.ravel(x0), **kwargs)
    result.fun = np.atleast_1d(result.fun)
    return result


class HeadraceGPTuner(GPTuner):
    """NNI's `GPTuner` using the flattening `minimize` above, with an optional `seed`."""

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if seed is not None:
            # the one generator NNI's tuner shares with its GP and its target space
            self._random_state.seed(seed)

    def generate_parameters(self, *args: Any, **kwargs: Any) -> Any:
        original = _gp_util.minimize
        _gp_util.minimize = _minimize_flat
        try:
            return super().generate_parameters(*args, **kwargs)
        finally:
            _gp_util.minimize = original
