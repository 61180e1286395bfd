"""Registry of the unary and binary operators an activation function is built from.

Every operator has a numerically safe PyTorch implementation, a sympy form for formulas and whether it carries a
trainable parameter beta (with its initial value). The plain names follow GRAFS's published code (automl/GRAFS,
rn/activation_cell/ac_cell.py), in the search and in retraining alike:
- sqrt: `sqrt(max(x, 1e-3))`: its derivative is at most 1/(2 sqrt(1e-3)) = 15.8, and 0 below 1e-3.
- overflow: exp, sinh, cosh, x^2 and x^3 clip their *input* so that the output stays within +-BOUND = 10 (GRAFS:
  unbounded operators make one-shot search diverge); the gradient is 0 beyond the clip.
- the product clamps each factor to +-sqrt(BOUND), so both partial derivatives are bounded too.
- interp: sigmoid(beta)*x1 + (1 - sigmoid(beta))*x2 from beta = 0 (GRAFS's BetaMix).
- log: `log(max(|x|, eps))`; division: the denominator pushed away from 0 to +-eps, the quotient clipped to
  +-BOUND (GRAFS leaves these two out of its set).
The definitions this project used before (`OP_SETS["grafs_legacy"]`) stay selectable under their own names, so that
the comparison can be rerun (docs/science.md): `sqrt_ramp` (a linear ramp of slope 1/sqrt(eps) on [0, eps], then
sqrt), `square_b20`, `cube_b20`, `exp_b20`, `sinh_b20` (bounded at 20), `mul_b20` (only the product clipped at 20)
and `interp_lin` (beta*x1 + (1-beta)*x2 from beta = 0.5).
With these guards every operator's output and gradient are finite for inputs in [-1e4, 1e4] (tested).
The sympy forms describe the function inside the bounds, which is where BatchNorm keeps the inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import sympy
import torch
import torch.nn.functional as F

BOUND = 10.0  # largest magnitude an overflow-prone operator may output (GRAFS's `inf`)
LEGACY_BOUND = 20.0  # the bound of the `_b20` operators (this project's definitions before GRAFS's)
SQRT_FLOOR = 1e-3  # GRAFS's sqrt: sqrt(max(x, SQRT_FLOOR))
EPS = 1e-4  # distance kept from the singular points of log and division, and the width of sqrt_ramp's ramp

Tensor = torch.Tensor


@dataclass(frozen=True)
class Op:
    """One operator. `fn(*inputs, beta)` computes it; `sym(*inputs, beta)` gives its sympy form."""

    name: str
    arity: int
    fn: Callable[..., Tensor]
    sym: Callable[..., sympy.Expr]
    beta_init: Optional[float] = None  # None: the operator has no trainable parameter
    text: str = ""  # how the operator reads in docs, e.g. "beta*x"

    @property
    def has_beta(self) -> bool:
        return self.beta_init is not None


def _clip_input(x: Tensor, limit: float) -> Tensor:
    return x.clamp(-limit, limit)


def _grafs_sqrt(x: Tensor, beta=None) -> Tensor:
    return torch.sqrt(x.clamp(min=SQRT_FLOOR))


def _ramp_sqrt(x: Tensor, beta=None) -> Tensor:
    # Legacy: exact for x >= EPS; a linear ramp from 0 on [0, EPS] (slope 1/sqrt(EPS) = 100) below.
    return torch.where(x > EPS, torch.sqrt(x.clamp(min=EPS)), x.clamp(min=0) / math.sqrt(EPS))


def _grafs_mul(a: Tensor, c: Tensor, beta=None) -> Tensor:
    return a.clamp(-_X_FACTOR, _X_FACTOR) * c.clamp(-_X_FACTOR, _X_FACTOR)


def _safe_log(x: Tensor, beta=None) -> Tensor:
    # Exact for |x| >= EPS, constant log(EPS) closer to 0.
    return torch.log(x.abs().clamp(min=EPS))


def _safe_div(x1: Tensor, x2: Tensor, beta=None) -> Tensor:
    # Push |x2| to at least EPS keeping its sign (0 counts as positive): no division by ~0.
    sign = torch.where(x2 < 0, -1.0, 1.0).to(x2.dtype)
    denominator = sign * x2.abs().clamp(min=EPS)
    return (x1 / denominator).clamp(-BOUND, BOUND)


# Cheaper formulas: on CPU torch.asinh, torch.sinh, torch.cosh and torch.sinc run a scalar loop, 30-100x slower
# than a vectorized exp or log (bench/throughput.py); these use only vectorized functions, equal within rounding.
def fast_asinh(x: Tensor) -> Tensor:
    """asinh(|x|) = log1p(a + a / (1/a + sqrt(1 + 1/a^2))): no cancellation near 0, no overflow for large a."""
    a = x.abs()
    inverse = 1.0 / a
    return torch.log1p(a + a / (inverse + torch.sqrt(1.0 + inverse * inverse))).copysign(x)


def fast_sinh(x: Tensor) -> Tensor:
    m = torch.expm1(x)  # (e^x - e^-x)/2 = (m + m/(m+1))/2: both terms share the sign of x, no cancellation
    return 0.5 * (m + m / (m + 1.0))


def fast_cosh(x: Tensor) -> Tensor:
    e = torch.exp(x)
    return 0.5 * (e + 1.0 / e)


def fast_sinc(x: Tensor) -> Tensor:
    """sin(x)/x with 1 at 0 (the 0 branch divides 1 by 1, so no NaN reaches any gradient)."""
    zero = x == 0
    safe = torch.where(zero, torch.ones_like(x), x)
    return torch.where(zero, torch.ones_like(x), torch.sin(safe) / safe)


class _Asinh(torch.autograd.Function):
    """fast_asinh with the closed-form derivative: autograd through the formula gives NaN at x = 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return fast_asinh(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.rsqrt(1.0 + x * x)


def _sinc(x: Tensor, beta=None) -> Tensor:
    return fast_sinc(x)


def _beta_like(x: Tensor, beta: Tensor) -> Tensor:
    return beta * torch.ones_like(x)


_X_EXP = math.log(BOUND)
_X_SQUARE = math.sqrt(BOUND)
_X_FACTOR = math.sqrt(BOUND)  # each factor of a product, so the product stays within +-BOUND
_X_CUBE = BOUND ** (1 / 3)
_X_HYP = math.asinh(BOUND)  # sinh and cosh reach BOUND here (cosh slightly above, fine)
_X_EXP_B20, _X_SQUARE_B20 = math.log(LEGACY_BOUND), math.sqrt(LEGACY_BOUND)
_X_CUBE_B20, _X_HYP_B20 = LEGACY_BOUND ** (1 / 3), math.asinh(LEGACY_BOUND)

x_, x1_, x2_, beta_ = sympy.symbols("x x1 x2 beta", real=True)


class sigmoid_(sympy.Function):  # noqa: N801 - sympy prints the class name: formulas read sigmoid(x)
    """1 / (1 + exp(-x)), kept as a named function so formulas read x*sigmoid(x), not x*exp(x)/(exp(x) + 1); it
    evaluates where a reader would (sigmoid(0) = 1/2, float arguments) and differentiates as sigmoid."""

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sympy.S.Half
        if arg.is_Float:
            return 1 / (1 + sympy.exp(-arg))
        return None

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sympy.exp(-arg))


sigmoid_.__name__ = "sigmoid"

UNARY: dict[str, Op] = {}
BINARY: dict[str, Op] = {}


def _unary(name, fn, sym, text, beta_init=None):
    UNARY[name] = Op(name, 1, fn, sym, beta_init, text)


def _binary(name, fn, sym, text, beta_init=None):
    BINARY[name] = Op(name, 2, fn, sym, beta_init, text)


# fmt: off
_unary("identity", lambda x, b=None: x, lambda x, b: x, "x")
_unary("neg", lambda x, b=None: -x, lambda x, b: -x, "-x")
_unary("abs", lambda x, b=None: x.abs(), lambda x, b: sympy.Abs(x), "|x|")
_unary("square", lambda x, b=None: _clip_input(x, _X_SQUARE) ** 2, lambda x, b: x ** 2, "x^2")
_unary("cube", lambda x, b=None: _clip_input(x, _X_CUBE) ** 3, lambda x, b: x ** 3, "x^3")
_unary("sqrt", _grafs_sqrt, lambda x, b: sympy.sqrt(sympy.Max(x, sympy.Float(SQRT_FLOOR))), "sqrt(max(x,1e-3))")
# Initial betas keep every candidate a different function at initialisation (tests/test_op_sets.py): scale at 1
# would be identity, shift at 0 identity, const at 0 zero; identical candidates get identical alpha gradients, so
# their family's weight is split between them and the argmax is biased against it. shift and const start at 1 as
# in the original code and GRAFS (whose N(1, 0.25) draw is search.beta_init: grafs); scale at 0.5.
_unary("scale", lambda x, b: b * x, lambda x, b: b * x, "beta*x", beta_init=0.5)
_unary("shift", lambda x, b: x + b, lambda x, b: x + b, "x+beta", beta_init=1.0)
_unary("log", _safe_log, lambda x, b: sympy.log(sympy.Abs(x)), "log(|x|)")
_unary("exp", lambda x, b=None: torch.exp(x.clamp(max=_X_EXP)), lambda x, b: sympy.exp(x), "exp(x)")
_unary("sin", lambda x, b=None: torch.sin(x), lambda x, b: sympy.sin(x), "sin(x)")
_unary("cos", lambda x, b=None: torch.cos(x), lambda x, b: sympy.cos(x), "cos(x)")
_unary("sinh", lambda x, b=None: fast_sinh(_clip_input(x, _X_HYP)), lambda x, b: sympy.sinh(x), "sinh(x)")
_unary("cosh", lambda x, b=None: fast_cosh(_clip_input(x, _X_HYP)), lambda x, b: sympy.cosh(x), "cosh(x)")
_unary("tanh", lambda x, b=None: torch.tanh(x), lambda x, b: sympy.tanh(x), "tanh(x)")
_unary("asinh", lambda x, b=None: _Asinh.apply(x), lambda x, b: sympy.asinh(x), "asinh(x)")
_unary("atan", lambda x, b=None: torch.atan(x), lambda x, b: sympy.atan(x), "atan(x)")
_unary("sinc", _sinc, lambda x, b: sympy.sinc(x), "sin(x)/x")
_unary("relu", lambda x, b=None: F.relu(x), lambda x, b: sympy.Max(x, 0), "max(x,0)")
_unary("min0", lambda x, b=None: -F.relu(-x), lambda x, b: sympy.Min(x, 0), "min(x,0)")
_unary("sigmoid", lambda x, b=None: torch.sigmoid(x), lambda x, b: sigmoid_(x), "sigmoid(x)")
_unary("softplus", lambda x, b=None: F.softplus(x), lambda x, b: sympy.log(1 + sympy.exp(x)), "log(1+exp(x))")
_unary("gauss", lambda x, b=None: torch.exp(-x * x), lambda x, b: sympy.exp(-x ** 2), "exp(-x^2)")
_unary("erf", lambda x, b=None: torch.erf(x), lambda x, b: sympy.erf(x), "erf(x)")
_unary("const", _beta_like, lambda x, b: b, "beta", beta_init=1.0)
_unary("zero", lambda x, b=None: torch.zeros_like(x), lambda x, b: sympy.Integer(0), "0")
_unary("sign", lambda x, b=None: torch.sign(x), lambda x, b: sympy.sign(x), "sign(x)")
_unary("silu", lambda x, b=None: F.silu(x), lambda x, b: x * sigmoid_(x), "x*sigmoid(x)")
_unary("gelu", lambda x, b=None: F.gelu(x), lambda x, b: x * (1 + sympy.erf(x / sympy.sqrt(2))) / 2, "gelu(x)")
_unary("elu", lambda x, b=None: F.elu(x),
       lambda x, b: sympy.Piecewise((x, x > 0), (sympy.exp(x) - 1, True)), "elu(x)")
_unary("leaky_relu", lambda x, b=None: F.leaky_relu(x, 0.01),
       lambda x, b: sympy.Max(x, sympy.Rational(1, 100) * x), "max(x,0.01x)")

_binary("add", lambda a, c, b=None: a + c, lambda a, c, b: a + c, "x1+x2")
_binary("mul", _grafs_mul, lambda a, c, b: a * c, "x1*x2")
_binary("sub", lambda a, c, b=None: a - c, lambda a, c, b: a - c, "x1-x2")
_binary("div", _safe_div, lambda a, c, b: a / c, "x1/(x2+eps)")
_binary("max", lambda a, c, b=None: torch.maximum(a, c), lambda a, c, b: sympy.Max(a, c), "max(x1,x2)")
_binary("min", lambda a, c, b=None: torch.minimum(a, c), lambda a, c, b: sympy.Min(a, c), "min(x1,x2)")
_binary("sigmul", lambda a, c, b=None: torch.sigmoid(a) * c, lambda a, c, b: sigmoid_(a) * c,
        "sigmoid(x1)*x2")
_binary("gauss_sq", lambda a, c, b: torch.exp((-b * (a - c) ** 2).clamp(max=_X_EXP)),
        lambda a, c, b: sympy.exp(-b * (a - c) ** 2), "exp(-beta*(x1-x2)^2)", beta_init=1.0)
_binary("gauss_abs", lambda a, c, b: torch.exp((-b * (a - c).abs()).clamp(max=_X_EXP)),
        lambda a, c, b: sympy.exp(-b * sympy.Abs(a - c)), "exp(-beta*|x1-x2|)", beta_init=1.0)
_binary("interp", lambda a, c, b: torch.sigmoid(b) * a + (1 - torch.sigmoid(b)) * c,
        lambda a, c, b: sigmoid_(b) * a + (1 - sigmoid_(b)) * c, "sigmoid(beta)*x1+(1-sigmoid(beta))*x2",
        beta_init=0.0)
_binary("left", lambda a, c, b=None: a, lambda a, c, b: a, "x1")
_binary("right", lambda a, c, b=None: c, lambda a, c, b: c, "x2")

# The legacy definitions (OP_SETS["grafs_legacy"]), kept so that results made with them can be rerun.
_unary("sqrt_ramp", _ramp_sqrt, lambda x, b: sympy.sqrt(sympy.Max(x, 0)), "sqrt(max(x,0)), ramp on [0,1e-4]")
_unary("square_b20", lambda x, b=None: _clip_input(x, _X_SQUARE_B20) ** 2, lambda x, b: x ** 2, "x^2 (bound 20)")
_unary("cube_b20", lambda x, b=None: _clip_input(x, _X_CUBE_B20) ** 3, lambda x, b: x ** 3, "x^3 (bound 20)")
_unary("exp_b20", lambda x, b=None: torch.exp(x.clamp(max=_X_EXP_B20)), lambda x, b: sympy.exp(x),
       "exp(x) (bound 20)")
_unary("sinh_b20", lambda x, b=None: fast_sinh(_clip_input(x, _X_HYP_B20)), lambda x, b: sympy.sinh(x),
       "sinh(x) (bound 20)")
_binary("mul_b20", lambda a, c, b=None: (a * c).clamp(-LEGACY_BOUND, LEGACY_BOUND), lambda a, c, b: a * c,
        "x1*x2 (product clipped at 20)")
_binary("interp_lin", lambda a, c, b: b * a + (1 - b) * c, lambda a, c, b: b * a + (1 - b) * c,
        "beta*x1+(1-beta)*x2", beta_init=0.5)
# fmt: on

# Each legacy operator and the GRAFS operator it stood in for.
LEGACY_NAMES = {"sqrt": "sqrt_ramp", "square": "square_b20", "cube": "cube_b20", "exp": "exp_b20",
                "sinh": "sinh_b20", "mul": "mul_b20", "interp": "interp_lin"}

# Named operator sets: (unary names, binary names).
OP_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # The original study's restricted set (jr2021/DARTS_activations): 18 unary, 7 binary. Its `Sign` computes -x
    # (`neg` here, not torch.sign); its `BetaMix` is -beta*x1 + (1-beta)*x2 from beta = 1, `interp` here.
    "poster": (
        ("identity", "zero", "sqrt", "sin", "cos", "abs", "neg", "scale", "shift", "log", "tanh", "asinh",
         "atan", "sinc", "relu", "min0", "sigmoid", "const"),
        ("add", "sub", "mul", "max", "min", "sigmul", "interp"),
    ),
    # Ramachandran et al. (2017), Searching for Activation Functions: 25 unary, 10 binary.
    "ramachandran": (
        ("identity", "neg", "abs", "square", "cube", "sqrt", "scale", "shift", "log", "exp", "sin", "cos",
         "sinh", "cosh", "tanh", "asinh", "atan", "sinc", "relu", "min0", "sigmoid", "softplus", "gauss", "erf",
         "const"),
        ("add", "mul", "sub", "div", "max", "min", "sigmul", "gauss_sq", "gauss_abs", "interp"),
    ),
    # GRAFS (2024): bounded operators plus modern activations: 23 unary, 9 binary.
    "grafs": (
        ("identity", "neg", "abs", "square", "cube", "sqrt", "shift", "scale", "const", "exp", "sinh", "tanh",
         "asinh", "atan", "relu", "min0", "sigmoid", "softplus", "erf", "silu", "gelu", "elu", "leaky_relu"),
        ("add", "sub", "mul", "max", "min", "sigmul", "interp", "left", "right"),
    ),
}
# GRAFS's set with this project's earlier definitions (ramp sqrt, bound 20, product clip, linear interp).
OP_SETS["grafs_legacy"] = tuple(tuple(LEGACY_NAMES.get(name, name) for name in names) for names in OP_SETS["grafs"])


def resolve_op_set(spec: str | dict | Sequence) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Turn an op-set spec into (unary names, binary names).

    A spec is a set name (`poster`, `ramachandran`, `grafs`) or `{"unary": [...], "binary": [...]}`.
    """
    if isinstance(spec, str):
        if spec not in OP_SETS:
            raise ValueError(f"unknown operator set {spec!r}; choose one of {sorted(OP_SETS)} "
                             "or give {'unary': [...], 'binary': [...]}")
        return OP_SETS[spec]
    if isinstance(spec, dict) and set(spec) == {"unary", "binary"}:
        unary, binary = tuple(spec["unary"]), tuple(spec["binary"])
        for names, registry, kind in ((unary, UNARY, "unary"), (binary, BINARY, "binary")):
            if not names:
                raise ValueError(f"the {kind} operator list is empty; name at least one of {sorted(registry)}")
            unknown = [n for n in names if n not in registry]
            if unknown:
                raise ValueError(f"unknown {kind} operator(s) {unknown}; allowed: {sorted(registry)}")
            if len(set(names)) != len(names):
                raise ValueError(f"the {kind} operator list {list(names)} repeats a name")
        return unary, binary
    raise ValueError(f"an operator set is a name {sorted(OP_SETS)} or a mapping with keys 'unary' and 'binary', "
                     f"got {spec!r}")


def get_op(name: str) -> Op:
    if name in UNARY:
        return UNARY[name]
    if name in BINARY:
        return BINARY[name]
    raise KeyError(f"unknown operator {name!r}; unary: {sorted(UNARY)}; binary: {sorted(BINARY)}")
