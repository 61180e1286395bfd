"""Every operator's value and closed-form partial derivatives, for the fused cell in `pipeline/kernels/fused.py`.

Each formula reproduces its `pipeline.space.ops` operator, domain guards included: where ops.py clips an input, the
derivative here is 0 beyond the clip, exactly as autograd through `clamp` gives (tests/test_fused.py checks values
and gradients against autograd through `Op.fn`). A derivative is a tensor or a plain float (a constant; 0.0 means
"no contribution" and is skipped). `Terms` caches intermediates that several operators share.

Two ways to compute the same numbers, chosen while the kernel is built:
- compiled (torch.compile): arithmetic is nearly free and transcendental calls cost the time, so one exp(x)
  serves sigmoid, tanh, softplus, sinh, cosh, elu, silu (in a compiled CPU kernel tanh costs 2.3 exps, expm1
  1.9, sigmoid 1), and erf, atan, asinh come from `pipeline.kernels.fast_math`;
- eager: every torch call is a pass over memory, so each quantity is one native call (torch.tanh, F.gelu, ...),
  and masks multiply instead of torch.where (a non-vectorized 3 ns per element on CPU, 7x a multiply).
With x = +-inf the eager masks give NaN where torch.where would give 0; BatchNorm outputs are finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from pipeline.kernels import fast_math
from pipeline.space.ops import (_X_CUBE, _X_CUBE_B20, _X_EXP, _X_EXP_B20, _X_FACTOR, _X_HYP, _X_HYP_B20, _X_SQUARE,
                                _X_SQUARE_B20, EPS, LEGACY_BOUND, SQRT_FLOOR, BOUND, fast_asinh, fast_cosh, fast_sinc,
                                fast_sinh)

Tensor = torch.Tensor
Deriv = Union[Tensor, float]
SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: beyond it softplus(x) = x
EXP_CLIP = 30.0  # the shared exp's input range: sigmoid and tanh are within 1e-13 of +-1 beyond it
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_RSQRT_EPS = 1.0 / math.sqrt(EPS)  # slope of sqrt's linear ramp on [0, EPS]


def _compiled() -> bool:
    return torch.compiler.is_compiling()


def _where0(mask: Tensor, value: Tensor) -> Tensor:
    if _compiled():
        return torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))
    return value * mask


class Terms:
    """One input tensor and the intermediates computed from it, each at most once."""

    def __init__(self, x: Tensor):
        self.x = x
        self._cache: dict[str, Tensor] = {}

    def get(self, key: str, make: Callable[[], Tensor]) -> Tensor:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    sq = property(lambda self: self.get("sq", lambda: self.x * self.x))
    abs = property(lambda self: self.get("abs", lambda: self.x.abs()))
    sign = property(lambda self: self.get("sign", lambda: torch.sign(self.x)))
    positive = property(lambda self: self.get("positive", lambda: self.x > 0))
    ones = property(lambda self: self.get("ones", lambda: torch.ones_like(self.x)))  # eager derivatives' grad
    # compiled only: exp - 1 is expm1 to 1 ulp of 1 (6e-8 in float32) in absolute terms, all tanh/sinh/elu need
    exp = property(lambda self: self.get("exp", lambda: torch.exp(self.x.clamp(-EXP_CLIP, EXP_CLIP))))
    expm1 = property(lambda self: self.get("expm1", lambda: self.exp - 1.0))
    half_gauss = property(lambda self: self.get("half_gauss", lambda: torch.exp(-0.5 * self.sq)))  # gelu'
    gauss = property(lambda self: self.get("gauss", lambda: self.half_gauss * self.half_gauss))  # exp(-x^2)
    hypot1 = property(lambda self: self.get("hypot1", lambda: fast_math.hypot1(self.x)))  # sqrt(1 + x^2)

    @property
    def sigmoid(self):
        return self.get("sigmoid", lambda: self.exp / (1.0 + self.exp) if _compiled() else torch.sigmoid(self.x))

    @property
    def tanh(self):  # (e^2x - 1) / (e^2x + 1) with e^2x - 1 = m (m + 2), m = expm1(x): no cancellation near 0
        def make():
            if not _compiled():
                return torch.tanh(self.x)
            m2 = self.expm1 * (self.expm1 + 2.0)
            return m2 / (m2 + 2.0)

        return self.get("tanh", make)

    @property
    def gelu_cdf(self):  # Phi(x), the standard normal CDF
        def make():
            z = self.x * (1.0 / math.sqrt(2.0))
            return 0.5 * (1.0 + (fast_math.erf_from_gauss(z, self.half_gauss) if _compiled() else torch.erf(z)))

        return self.get("gelu_cdf", make)

    def inside(self, limit: float) -> Tensor:
        return self.get(f"inside{limit}", lambda: self.abs <= limit)

    def clipped(self, limit: float) -> Tensor:
        return self.get(f"clip{limit}", lambda: self.x.clamp(-limit, limit))


@dataclass(frozen=True)
class UnaryGrad:
    value: Callable[[Terms, Optional[Tensor]], Union[Tensor, float]]
    dx: Callable[[Terms, Optional[Tensor]], Deriv]
    dbeta: Optional[Callable[[Terms, Optional[Tensor]], Deriv]] = None
    dbeta_reads_input: bool = True  # False: d/d beta is a constant, backward needs no input value for it


@dataclass(frozen=True)
class BinaryGrad:
    value: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]
    partials: Callable[[Tensor, Tensor, Optional[Tensor]], tuple[Deriv, Deriv]]
    dbeta: Optional[Callable[[Tensor, Tensor, Optional[Tensor]], Deriv]] = None
    dbeta_reads_input: bool = True


def _exp_clipped(t: Terms, limit: float = _X_EXP) -> Tensor:  # exp(min(x, limit))
    def make():
        if _compiled():  # exp is monotonic; the shared exp is exact here as limit < EXP_CLIP
            return t.exp.clamp(max=math.exp(limit))
        return torch.exp(t.x.clamp(max=limit))

    return t.get(f"exp_clip{limit}", make)


def _sinh_clipped(t: Terms, limit: float = _X_HYP) -> Tensor:  # sinh(clip(x, +-limit)) = (m + m/(m + 1)) / 2
    def make():  # m = expm1(clip(x))
        if not _compiled():
            return fast_sinh(t.clipped(limit))
        m = t.expm1.clamp(math.expm1(-limit), math.expm1(limit))
        return 0.5 * (m + m / (m + 1.0))

    return t.get(f"sinh{limit}", make)


def _cosh_clipped(t: Terms, limit: float = _X_HYP) -> Tensor:
    def make():
        if not _compiled():
            return fast_cosh(t.clipped(limit))
        e = t.exp.clamp(math.exp(-limit), math.exp(limit))
        return 0.5 * (e + 1.0 / e)

    return t.get(f"cosh{limit}", make)


def _grafs_sqrt_root(t: Terms) -> Tensor:
    return t.get("sqrt_floor", lambda: torch.sqrt(t.x.clamp(min=SQRT_FLOOR)))


def _grafs_sqrt_dx(t: Terms) -> Tensor:
    # clamp passes the gradient where x >= SQRT_FLOOR (autograd's clamp: the bound itself counts as inside).
    return _where0(t.x >= SQRT_FLOOR, 0.5 / _grafs_sqrt_root(t))


def _sqrt_root(t: Terms) -> Tensor:
    return t.get("sqrt", lambda: torch.sqrt(t.x.clamp(min=EPS)))


def _sqrt_value(t: Terms) -> Tensor:
    # ops.py's sqrt_ramp: sqrt(x) above EPS, the ramp x / sqrt(EPS) on [0, EPS], 0 below; the smaller of the two.
    return torch.minimum(_sqrt_root(t), t.x.clamp(min=0) * _RSQRT_EPS)


def _sqrt_dx(t: Terms) -> Tensor:
    if _compiled():
        return torch.where(t.x > EPS, 0.5 / _sqrt_root(t), _where0(t.x >= 0, t.x.new_full((), _RSQRT_EPS)))
    return 0.5 / _sqrt_root(t) * (t.x > EPS) + _RSQRT_EPS * ((t.x >= 0) & (t.x <= EPS))


def _power_grads(exponent: int, limit: float) -> "UnaryGrad":  # clip(x, +-limit) ** exponent
    return UnaryGrad(lambda t, b: t.clipped(limit) ** exponent,
                     lambda t, b: _where0(t.inside(limit), exponent * (t.x if exponent == 2 else t.sq)))


def _exp_grads(limit: float) -> "UnaryGrad":
    return UnaryGrad(lambda t, b: _exp_clipped(t, limit), lambda t, b: _where0(t.x <= limit, _exp_clipped(t, limit)))


def _sinh_grads(limit: float) -> "UnaryGrad":
    return UnaryGrad(lambda t, b: _sinh_clipped(t, limit),
                     lambda t, b: _where0(t.inside(limit), _cosh_clipped(t, limit)))


def _sinc_dx(t: Terms) -> Tensor:
    # (cos x - sinc x) / x cancels badly near 0; there the series -x/3 + x^3/30 is exact to ~1e-12.
    x = t.x
    small = t.abs < 1e-2
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, x * (-1.0 / 3.0 + t.sq * (1.0 / 30.0)), (torch.cos(safe) - fast_sinc(safe)) / safe)


def _softplus(t: Terms) -> Tensor:
    if not _compiled():
        return F.softplus(t.x)
    return torch.where(t.x > SOFTPLUS_THRESHOLD, t.x, fast_math.log1p_exp(t.exp))


def _native(compiled_formula: Callable, native: Callable) -> Callable:
    """An operator value or derivative: `compiled_formula(t)` in a compiled kernel, the one-pass `native(t)`
    eagerly. Eager derivatives call autograd's own backward kernel with a gradient of ones."""
    return lambda t, b: compiled_formula(t) if _compiled() else native(t)


_aten = torch.ops.aten


# fmt: off
UNARY_GRADS: dict[str, UnaryGrad] = {
    "identity": UnaryGrad(lambda t, b: t.x, lambda t, b: 1.0),
    "neg": UnaryGrad(lambda t, b: -t.x, lambda t, b: -1.0),
    "abs": UnaryGrad(lambda t, b: t.abs, lambda t, b: t.sign),
    "square": _power_grads(2, _X_SQUARE),
    "cube": _power_grads(3, _X_CUBE),
    "sqrt": UnaryGrad(lambda t, b: _grafs_sqrt_root(t), lambda t, b: _grafs_sqrt_dx(t)),
    "scale": UnaryGrad(lambda t, b: b * t.x, lambda t, b: b, lambda t, b: t.x),
    "shift": UnaryGrad(lambda t, b: t.x + b, lambda t, b: 1.0, lambda t, b: 1.0, dbeta_reads_input=False),
    "log": UnaryGrad(lambda t, b: torch.log(t.abs.clamp(min=EPS)),
                     lambda t, b: _where0(t.abs >= EPS, t.sign / t.abs.clamp(min=EPS))),
    "exp": _exp_grads(_X_EXP),
    "sin": UnaryGrad(lambda t, b: torch.sin(t.x), lambda t, b: torch.cos(t.x)),
    "cos": UnaryGrad(lambda t, b: torch.cos(t.x), lambda t, b: -torch.sin(t.x)),
    "sinh": _sinh_grads(_X_HYP),
    "cosh": UnaryGrad(lambda t, b: _cosh_clipped(t), lambda t, b: _where0(t.inside(_X_HYP), _sinh_clipped(t))),
    "tanh": UnaryGrad(lambda t, b: t.tanh, _native(lambda t: 1.0 - t.tanh * t.tanh,
                                                     lambda t: _aten.tanh_backward(t.ones, t.tanh))),
    "asinh": UnaryGrad(_native(lambda t: fast_math.asinh(t.x, t.hypot1), lambda t: fast_asinh(t.x)),
                       _native(lambda t: 1.0 / t.hypot1, lambda t: torch.rsqrt(1.0 + t.sq))),
    "atan": UnaryGrad(_native(lambda t: fast_math.atan(t.x), lambda t: torch.atan(t.x)),
                      lambda t, b: 1.0 / (1.0 + t.sq)),
    "sinc": UnaryGrad(lambda t, b: fast_sinc(t.x), lambda t, b: _sinc_dx(t)),
    "relu": UnaryGrad(lambda t, b: F.relu(t.x), _native(lambda t: t.positive.to(t.x.dtype),
                                                        lambda t: _aten.threshold_backward(t.ones, t.x, 0.0))),
    "min0": UnaryGrad(lambda t, b: t.x.clamp(max=0), lambda t, b: (t.x < 0).to(t.x.dtype)),
    "sigmoid": UnaryGrad(lambda t, b: t.sigmoid, _native(lambda t: t.sigmoid * (1.0 - t.sigmoid),
                                                          lambda t: _aten.sigmoid_backward(t.ones, t.sigmoid))),
    "softplus": UnaryGrad(lambda t, b: _softplus(t), _native(
        lambda t: torch.where(t.x > SOFTPLUS_THRESHOLD, 1.0, t.sigmoid),
        lambda t: _aten.softplus_backward(t.ones, t.x, 1.0, SOFTPLUS_THRESHOLD))),
    "gauss": UnaryGrad(lambda t, b: t.gauss, lambda t, b: -2.0 * t.x * t.gauss),
    "erf": UnaryGrad(_native(lambda t: fast_math.erf_from_gauss(t.x, t.gauss), lambda t: torch.erf(t.x)),
                     lambda t, b: _TWO_OVER_SQRT_PI * t.gauss),
    "const": UnaryGrad(lambda t, b: b, lambda t, b: 0.0, lambda t, b: 1.0, dbeta_reads_input=False),
    "zero": UnaryGrad(lambda t, b: 0.0, lambda t, b: 0.0),
    "sign": UnaryGrad(lambda t, b: t.sign, lambda t, b: 0.0),
    "silu": UnaryGrad(_native(lambda t: t.x * t.sigmoid, lambda t: F.silu(t.x)),
                      _native(lambda t: t.sigmoid * (1.0 + t.x * (1.0 - t.sigmoid)),
                              lambda t: _aten.silu_backward(t.ones, t.x))),
    "gelu": UnaryGrad(_native(lambda t: t.x * t.gelu_cdf, lambda t: F.gelu(t.x)),
                      _native(lambda t: t.gelu_cdf + _INV_SQRT_2PI * t.x * t.half_gauss,
                              lambda t: _aten.gelu_backward(t.ones, t.x))),
    "elu": UnaryGrad(_native(lambda t: torch.where(t.positive, t.x, t.expm1), lambda t: F.elu(t.x)),
                     _native(lambda t: t.exp.clamp(max=1.0),  # elu' = exp(min(x, 0)) on both sides of 0
                             lambda t: _aten.elu_backward(t.ones, 1.0, 1.0, 1.0, False, t.x))),
    "leaky_relu": UnaryGrad(_native(lambda t: torch.where(t.positive, t.x, 0.01 * t.x),
                                    lambda t: F.leaky_relu(t.x, 0.01)),
                            _native(lambda t: torch.where(t.positive, t.x.new_ones(()), t.x.new_full((), 0.01)),
                                    lambda t: _aten.leaky_relu_backward(t.ones, t.x, 0.01, False))),
    # the legacy definitions (pipeline.space.ops.LEGACY_NAMES)
    "sqrt_ramp": UnaryGrad(lambda t, b: _sqrt_value(t), lambda t, b: _sqrt_dx(t)),
    "square_b20": _power_grads(2, _X_SQUARE_B20),
    "cube_b20": _power_grads(3, _X_CUBE_B20),
    "exp_b20": _exp_grads(_X_EXP_B20),
    "sinh_b20": _sinh_grads(_X_HYP_B20),
}
# fmt: on


def _mul_value(a, c, b):
    return a.clamp(-_X_FACTOR, _X_FACTOR) * c.clamp(-_X_FACTOR, _X_FACTOR)


def _mul(a, c, b):  # each factor clamped: d/da = clamp(c) where |a| <= sqrt(BOUND), else 0
    return (_where0(a.abs() <= _X_FACTOR, c.clamp(-_X_FACTOR, _X_FACTOR)),
            _where0(c.abs() <= _X_FACTOR, a.clamp(-_X_FACTOR, _X_FACTOR)))


def _mul_b20(a, c, b):
    inside = (a * c).abs() <= LEGACY_BOUND
    return _where0(inside, c), _where0(inside, a)


def _interp_weight(b):
    return torch.sigmoid(b) if isinstance(b, Tensor) else 1.0 / (1.0 + math.exp(-b))


def _interp_partials(a, c, b):
    s = _interp_weight(b)
    return s, 1 - s


def _interp_dbeta(a, c, b):  # d/d beta of s*a + (1-s)*c with s = sigmoid(beta): s (1 - s) (a - c)
    s = _interp_weight(b)
    return s * (1 - s) * (a - c)


def _div_parts(a, c):
    denominator = (1.0 - 2.0 * (c < 0).to(c.dtype)) * c.abs().clamp(min=EPS)  # |c| >= EPS, sign kept, 0 -> +
    return denominator, a / denominator


def _div_partials(a, c, b):
    denominator, quotient = _div_parts(a, c)
    inside = quotient.abs() <= BOUND
    return _where0(inside, 1.0 / denominator), _where0(inside & (c.abs() >= EPS), -quotient / denominator)


def _max_partials(a, c, b):  # torch.maximum/minimum send half the gradient to each input on ties
    da = (a > c).to(a.dtype) + 0.5 * (a == c).to(a.dtype)
    return da, 1.0 - da


def _min_partials(a, c, b):
    da = (a < c).to(a.dtype) + 0.5 * (a == c).to(a.dtype)
    return da, 1.0 - da


def _sigmul_partials(a, c, b):
    s = torch.sigmoid(a)
    return s * (1.0 - s) * c, s


def _gauss_parts(a, c, b, distance):
    delta = a - c
    z = -b * distance(delta)
    return delta, z <= _X_EXP, torch.exp(z.clamp(max=_X_EXP))


def _gauss_sq_partials(a, c, b):
    delta, inside, e = _gauss_parts(a, c, b, lambda d: d * d)
    da = _where0(inside, -2.0 * b * delta * e)
    return da, -da


def _gauss_abs_partials(a, c, b):
    delta, inside, e = _gauss_parts(a, c, b, torch.abs)
    da = _where0(inside, -b * torch.sign(delta) * e)
    return da, -da


def _gauss_dbeta(distance):
    def dbeta(a, c, b):
        delta, inside, e = _gauss_parts(a, c, b, distance)
        return _where0(inside, -distance(delta) * e)

    return dbeta


# fmt: off
BINARY_GRADS: dict[str, BinaryGrad] = {
    "add": BinaryGrad(lambda a, c, b: a + c, lambda a, c, b: (1.0, 1.0)),
    "sub": BinaryGrad(lambda a, c, b: a - c, lambda a, c, b: (1.0, -1.0)),
    "mul": BinaryGrad(_mul_value, _mul),
    "div": BinaryGrad(lambda a, c, b: _div_parts(a, c)[1].clamp(-BOUND, BOUND), _div_partials),
    "max": BinaryGrad(lambda a, c, b: torch.maximum(a, c), _max_partials),
    "min": BinaryGrad(lambda a, c, b: torch.minimum(a, c), _min_partials),
    "sigmul": BinaryGrad(lambda a, c, b: torch.sigmoid(a) * c, _sigmul_partials),
    "gauss_sq": BinaryGrad(lambda a, c, b: _gauss_parts(a, c, b, lambda d: d * d)[2], _gauss_sq_partials,
                           _gauss_dbeta(lambda d: d * d)),
    "gauss_abs": BinaryGrad(lambda a, c, b: _gauss_parts(a, c, b, torch.abs)[2], _gauss_abs_partials,
                            _gauss_dbeta(torch.abs)),
    "interp": BinaryGrad(lambda a, c, b: _interp_weight(b) * a + (1 - _interp_weight(b)) * c, _interp_partials,
                         _interp_dbeta),
    "mul_b20": BinaryGrad(lambda a, c, b: (a * c).clamp(-LEGACY_BOUND, LEGACY_BOUND), _mul_b20),
    "interp_lin": BinaryGrad(lambda a, c, b: b * a + (1 - b) * c, lambda a, c, b: (b, 1 - b),
                             lambda a, c, b: a - c),
    "left": BinaryGrad(lambda a, c, b: a, lambda a, c, b: (1.0, 0.0)),
    "right": BinaryGrad(lambda a, c, b: c, lambda a, c, b: (0.0, 1.0)),
}
# fmt: on
