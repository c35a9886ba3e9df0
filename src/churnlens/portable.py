"""Floating-point results that are the same bytes on every machine.

The last bits of numpy's exp and log, and of OpenBLAS's products, depend on the CPU's vector unit
(AVX-512 machines run other kernels than AVX2 ones). A value computed through them and written to
a DVC output would make the same data and params give other bytes on another machine. Rounded
far above that noise (1e-16 relative) and far below any decision (1e-6), they do not: at the
demo's 775k predictions a rounding boundary falls between two machines' values a few times in
10^4 pipeline runs.
"""

from __future__ import annotations

import numpy as np

# Significant bits a prediction keeps: 2^-20 relative, about 6 significant digits. Relative, not
# decimals: a probability of 1e-9 stays above 0.
PREDICTION_BITS = 20


def settled(values: np.ndarray) -> np.ndarray:
    """A prediction rounded to :data:`PREDICTION_BITS` significant bits, by exact operations only
    (splitting off the binary exponent, rounding the mantissa, scaling back)."""
    mantissa, exponent = np.frexp(np.asarray(values, dtype=float))
    return np.ldexp(np.round(mantissa * 2.0**PREDICTION_BITS) / 2.0**PREDICTION_BITS, exponent)


def significant(value: float, digits: int) -> float:
    """``value`` to ``digits`` significant digits (a fitted parameter, whose standard error is far wider)."""
    return float(f"{value:.{digits - 1}e}")
