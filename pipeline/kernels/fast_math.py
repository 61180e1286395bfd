"""Cheaper elementwise functions for the fused cell's kernels, accurate to float32 rounding.

In a compiled CPU kernel the cell's cost is its transcendental functions: per element and call, SLEEF's atan
costs about 1.9 ns on the 2-core benchmark machine, log1p 1.4, erf 1.1 (an A&S polynomial plus an exp), exp 1.0,
log 1.06, a division or sqrt 0.1. Each function below trades one of the expensive calls for arithmetic:
- erf(x) from exp(-x^2), which the cell computes anyway for erf's and gelu's derivatives: the Abramowitz &
  Stegun 7.1.26 rational approximation (|error| <= 1.5e-7, the formula at::vec's AVX-512 erf uses, minus its
  own exp), and below |x| = 0.5 the Taylor series, which keeps the relative error small near 0.
- atan: the Cephes atanf range reduction (to |x| <= tan(pi/8)) and its degree-9 odd polynomial (< 2e-7).
- asinh(x) = sign(x) log(|x| + sqrt(1 + x^2)) (a log, not log1p) with the square root computed without
  overflow, which the derivative 1 / sqrt(1 + x^2) reuses; the Taylor series near 0.
float64 tensors get torch's own functions, so the float64 tests compare against exact values.
"""
from __future__ import annotations

import math

import torch

from pipeline.space.ops import fast_asinh

Tensor = torch.Tensor
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_ERF_SERIES = (1.0, -1.0 / 3, 1.0 / 10, -1.0 / 42, 1.0 / 216, -1.0 / 1320)  # x^(2n+1) / (n! (2n+1)) terms
_ATAN = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)
_TAN_3PI_8, _TAN_PI_8 = 2.414213562373095, 0.4142135623730950
_ASINH_SERIES = (1.0, -1.0 / 6, 3.0 / 40, -15.0 / 336)


def _precise(x: Tensor) -> bool:
    return x.dtype == torch.float64


def erf_from_gauss(x: Tensor, gauss: Tensor) -> Tensor:
    """erf(x), given gauss = exp(-x^2)."""
    if _precise(x):
        return torch.erf(x)
    a = x.abs()
    t = 1.0 / (1.0 + _AS_P * a)
    poly = _AS_A[4]
    for coefficient in reversed(_AS_A[:4]):
        poly = poly * t + coefficient
    tail = 1.0 - t * poly * gauss
    z = x * x
    series = _ERF_SERIES[-1]
    for coefficient in reversed(_ERF_SERIES[:-1]):
        series = series * z + coefficient
    return torch.where(a < 0.5, _TWO_OVER_SQRT_PI * x * series, tail.copysign(x))


def atan(x: Tensor) -> Tensor:
    if _precise(x):
        return torch.atan(x)
    a = x.abs()
    big, mid = a > _TAN_3PI_8, a > _TAN_PI_8
    # atan(a) = pi/2 + atan(-1/a) = pi/4 + atan((a-1)/(a+1)); the unselected branches' inf/nan stay unselected.
    r = torch.where(big, -1.0 / a, torch.where(mid, (a - 1.0) / (a + 1.0), a))
    offset = torch.where(big, math.pi / 2, torch.where(mid, math.pi / 4, 0.0))
    z = r * r
    poly = _ATAN[0]
    for coefficient in _ATAN[1:]:
        poly = poly * z + coefficient
    return (offset + (poly * z * r + r)).copysign(x)


def hypot1(x: Tensor) -> Tensor:
    """sqrt(1 + x^2) without overflow (x^2 overflows float32 beyond 1.8e19)."""
    a = x.abs()
    return torch.where(a > 1.0, a * torch.sqrt(1.0 + (1.0 / a) ** 2), torch.sqrt(1.0 + a * a))


def asinh(x: Tensor, root: Tensor) -> Tensor:
    """asinh(x), given root = hypot1(x). Below |x| = 0.15 the Taylor series (the log of a number near 1 would
    lose the relative precision there), error < 2e-9."""
    if _precise(x):
        return fast_asinh(x)
    z = x * x
    series = _ASINH_SERIES[-1]
    for coefficient in reversed(_ASINH_SERIES[:-1]):
        series = series * z + coefficient
    return torch.where(x.abs() < 0.15, x * series, torch.log(x.abs() + root).copysign(x))


def log1p_exp(e: Tensor) -> Tensor:
    """log(1 + e) for e = exp(x) >= 0: softplus. log is cheaper than log1p; 1 + e loses e < 6e-8, an absolute
    error below float32 resolution of the result."""
    return torch.log1p(e) if _precise(e) else torch.log(1.0 + e)
