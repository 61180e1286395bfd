"""Is a searched activation a known activation in disguise?

One-shot search often returns a formula such as ``min(-x, sqrt(max(x, 0))) + beta + x`` that is, on every input,
just ``beta + min(x, 0) = -relu(-x) + beta``. `find_equivalent` evaluates a function on a float64 grid and looks
for ``f(x) ~= a * g(c * x + d) + b`` with ``a != 0`` and ``g`` one of `KNOWN_ACTIVATIONS`:

- ``a, b`` (output map) are fitted by linear least squares for every candidate ``(c, d)``;
- ``c`` (input scale, sign included) and ``d`` (input shift) are searched on a coarse grid, then refined by
  Nelder-Mead (scipy.optimize.minimize) on the root-mean-square residual. ``d`` is searched through the centre ``x0 = -d / c`` of ``g``
  (its kink or inflection). A kink may sit anywhere in ``[x_min, x_max]``; a smooth ``g`` must be centred in the
  inner 80% of the window: seen only by its tail, a sigmoid or softplus is a plain exponential and would
  "explain" far too many functions. For the same reason ``|c| * (x_max - x_min) / 2`` is kept in ``[0.25, 50]``
  (sigmoid's c; tanh's is half of it): a very small scale turns every smooth ``g`` into a low-order polynomial.
- Positively homogeneous ``g`` (relu, leaky_relu, abs) fold ``|c|`` into ``a``, so they report ``c = +-1``;
  square is fitted exactly as a quadratic (the vertex may lie anywhere).
- leaky_relu's negative slope is fitted (any slope strictly between 0 and 1), not picked from a list.

Match: ``max |f - fit| <= rtol * (max f - min f) + atol`` on the grid (defaults ``rtol = 1e-3``, ``atol = 1e-6``).

Order, so that the simplest explanation wins: constant, affine ("identity"), relu, leaky_relu, abs, square, then
the smooth ones (swish, gelu, elu, softplus, tanh/sigmoid), of which the smallest max error wins.
tanh and sigmoid are exactly affine images of each other (``tanh(u) = 2 * sigmoid(2u) - 1``); the one whose output
scale ``|a|`` is closer to 1 is reported (tanh when ``|a_tanh| > 1/sqrt(2)``), and the sign flip that leaves the
smaller output shift. Functions that are not finite on the whole grid match nothing (see `finite_on_grid`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.optimize import minimize

from pipeline.analysis.known_activations import KNOWN_ACTIVATIONS, Activation, Equivalence, format_number


def _grid(x_min: float, x_max: float, n: int, device: torch.device | str | None) -> torch.Tensor:
    if not (math.isfinite(x_min) and math.isfinite(x_max) and x_min < x_max):
        raise ValueError(f"need finite x_min < x_max, got x_min={x_min}, x_max={x_max}")
    if n < 16:
        raise ValueError(f"need at least 16 grid points to tell functions apart, got n={n}")
    return torch.linspace(x_min, x_max, n, dtype=torch.float64, device=device)


def _evaluate(f: Activation, x: torch.Tensor) -> torch.Tensor:
    """f on the grid as a CPU float64 tensor of the grid's shape (a scalar result is broadcast)."""
    if not callable(f):
        raise TypeError(f"expected a callable tensor -> tensor, got {type(f).__name__}")
    try:
        with torch.no_grad():
            y = torch.as_tensor(f(x.clone()))
        y = torch.broadcast_to(y.to(torch.float64), x.shape)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"could not evaluate the function on a 1-D float64 grid of {x.numel()} points ({error}); "
                         "pass an elementwise callable, e.g. lambda x: module(x.float()).double()") from error
    return y.detach().to("cpu")


def finite_on_grid(f: Activation, x_min: float = -5.0, x_max: float = 5.0, n: int = 2001,
                   device: torch.device | str | None = None) -> bool:
    """Whether f is finite (no inf/nan, e.g. from overflow) at every grid point."""
    return bool(torch.isfinite(_evaluate(f, _grid(x_min, x_max, n, device))).all())


@dataclass(frozen=True)
class _Fit:
    c: float
    x0: float  # centre of g: its kink or inflection sits at x = x0, so d = -c * x0
    coef: tuple[float, ...]  # b, then one coefficient per column
    rms: float
    max_error: float


def _least_squares(columns: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit y ~= b + columns @ coef for each of K candidates: columns (K, n, p) -> coef (K, p + 1), residual (K, n)."""
    if columns.shape[-1] == 1:  # closed form, several times faster than lstsq in the refinement loop
        g = columns.squeeze(-1)
        g_mean, y_mean = g.mean(dim=1, keepdim=True), y.mean()
        centred = g - g_mean
        variance = centred.square().sum(dim=1)
        scale = (centred * (y - y_mean)).sum(dim=1) / variance.clamp_min(1e-300)
        shift = y_mean - scale * g_mean.squeeze(1)
        return torch.stack([shift, scale], dim=1), y - (scale[:, None] * g + shift[:, None])
    ones = torch.ones(columns.shape[:-1] + (1,), dtype=columns.dtype)
    design = torch.cat([ones, columns], dim=-1)
    target = y.expand(columns.shape[0], -1).unsqueeze(-1)
    coef = torch.linalg.lstsq(design, target).solution
    return coef.squeeze(-1), (target - design @ coef).squeeze(-1)


@dataclass(frozen=True)
class _Family:
    name: str
    g: Activation | None  # fit b + a*g(c*(x - x0)); None: the two-slope fit b + p*relu(x - x0) + q*relu(x0 - x)
    signs: tuple[float, ...]  # signs of c to try (a symmetric g needs only +1)
    fit_scale: bool  # False: positively homogeneous g, |c| = 1

    def columns(self, x: torch.Tensor, c: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Regressors for K candidates (c[K], x0[K]): (K, n, 1), or (K, n, 2) for the two-slope fit."""
        shifted = x[None, :] - x0[:, None]
        if self.g is None:
            return torch.stack([torch.relu(shifted), torch.relu(-shifted)], dim=-1)
        return self.g(c[:, None] * shifted).unsqueeze(-1)


_RELU = _Family("relu", torch.relu, (1.0, -1.0), False)
_LEAKY = _Family("leaky_relu", None, (1.0,), False)
_ABS = _Family("abs", torch.abs, (1.0,), False)
# sigmoid also stands for tanh (see _tanh_or_sigmoid); it is searched, not tanh, because torch.tanh on small
# float64 tensors is pathologically slow with several intra-op threads. Its symmetry makes c > 0 enough.
_SMOOTH = [_Family(name, KNOWN_ACTIVATIONS[name], (1.0, -1.0), True) for name in ("swish", "gelu", "elu", "softplus")
           ] + [_Family("sigmoid", torch.sigmoid, (1.0,), True)]


def _nelder_mead(objective: Callable[[list[float]], float], start: list[float], step: list[float],
                 iterations: int = 200) -> list[float]:
    """Minimise a low-dimensional function without derivatives (the kinked families are not differentiable):
    scipy's Nelder-Mead from the simplex `start`, `start + step[i] * e_i`, stopping when the simplex is smaller
    than 1e-9 in every coordinate (whatever the spread of the values) or after `iterations` iterations."""
    simplex = np.array([start] + [[v + (step[i] if i == j else 0.0) for j, v in enumerate(start)]
                                  for i in range(len(start))], dtype=float)
    result = minimize(lambda point: objective(point.tolist()), np.asarray(start, dtype=float), method="Nelder-Mead",
                      options={"initial_simplex": simplex, "maxiter": iterations, "xatol": 1e-9, "fatol": np.inf})
    return result.x.tolist()


def _search(family: _Family, x: torch.Tensor, y: torch.Tensor, starts: int = 3) -> _Fit:
    """Best (c, x0) for one family: coarse grid over the bounded box, then Nelder-Mead from the best cells."""
    x_min, x_max = float(x[0]), float(x[-1])
    half_width = (x_max - x_min) / 2
    if family.fit_scale:  # a smooth g centred near the edge shows only its tail (see the module docstring)
        x_min, x_max = x_min + 0.2 * half_width, x_max - 0.2 * half_width
    log_low, log_high = math.log(0.25 / half_width), math.log(50.0 / half_width)
    magnitudes = torch.linspace(log_low, log_high, 13, dtype=torch.float64).exp() if family.fit_scale \
        else torch.ones(1, dtype=torch.float64)
    centres = torch.linspace(x_min, x_max, 21 if family.fit_scale else 41, dtype=torch.float64)
    c = torch.cat([sign * magnitudes for sign in family.signs]).repeat_interleave(len(centres))
    x0 = centres.repeat(len(family.signs) * len(magnitudes))
    every = max(1, len(x) // 400)  # ranking the coarse cells needs no fine grid
    rms = _least_squares(family.columns(x[::every], c, x0), y[::every])[1].square().mean(dim=1)

    def unpack(params: list[float], sign: float) -> tuple[float, float]:
        centre = min(max(params[-1], x_min), x_max)
        scale = sign * math.exp(min(max(params[0], log_low), log_high)) if family.fit_scale else sign
        return scale, centre

    def fit_at(scale: float, centre: float) -> _Fit:
        columns = family.columns(x, torch.tensor([scale], dtype=x.dtype), torch.tensor([centre], dtype=x.dtype))
        coef, residual = _least_squares(columns, y)
        return _Fit(scale, centre, tuple(coef[0].tolist()), float(residual.square().mean().sqrt()),
                    float(residual.abs().max()))

    y_centred = y - y.mean()

    def mean_square_residual(params: list[float], sign: float) -> float:
        """The refinement's objective; a lean version of fit_at (few tensor ops) for one-column fits."""
        scale, centre = unpack(params, sign)
        if family.g is None:
            return fit_at(scale, centre).rms ** 2
        g = family.g(scale * (x - centre))
        g_centred = g - g.mean()
        variance = torch.dot(g_centred, g_centred)
        if float(variance) <= 0.0:
            return float(torch.dot(y_centred, y_centred)) / len(x)
        residual = y_centred - (torch.dot(g_centred, y_centred) / variance) * g_centred
        return float(torch.dot(residual, residual)) / len(x)

    best: _Fit | None = None
    grid_step = float(centres[1] - centres[0])
    for index in rms.argsort()[:starts].tolist():
        sign = math.copysign(1.0, float(c[index]))
        start = ([math.log(abs(float(c[index])))] if family.fit_scale else []) + [float(x0[index])]
        step = ([0.3] if family.fit_scale else []) + [grid_step]
        params = _nelder_mead(lambda p: mean_square_residual(p, sign), start, step)
        fit = fit_at(*unpack(params, sign))
        if best is None or fit.rms < best.rms:
            best = fit
    return best


def _tanh_or_sigmoid(a: float, b: float, c: float, x0: float, max_error: float) -> Equivalence:
    """Report a*sigmoid(c*(x - x0)) + b (c > 0) as sigmoid or as tanh, whichever needs output scale nearer 1."""
    if abs(a) > 2 ** 0.5:  # == (a/2)*tanh(c/2*(x - x0)) + b + a/2, and |a/2| is nearer 1 than |a|
        return Equivalence("tanh", a / 2, b + a / 2, c / 2, -c / 2 * x0, max_error)
    if abs(a + b) < abs(b):  # == -a*sigmoid(-c*(x - x0)) + a + b: flip the input sign if it shrinks the shift
        return Equivalence("sigmoid", -a, a + b, -c, c * x0, max_error)
    return Equivalence("sigmoid", a, b, c, -c * x0, max_error)


def _leaky(fit: _Fit) -> Equivalence | None:
    """Name b + p*relu(x - x0) + q*relu(x0 - x) as a*leaky_relu(+-(x - x0), slope) + b, if slopes allow."""
    b, right, left = fit.coef[0], fit.coef[1], -fit.coef[2]
    if right != 0 and 0 < left / right < 1:
        return Equivalence("leaky_relu", right, b, 1.0, -fit.x0, fit.max_error, slope=left / right)
    if left != 0 and 0 < right / left < 1:
        return Equivalence("leaky_relu", -left, b, -1.0, fit.x0, fit.max_error, slope=right / left)
    return None


def _from_fit(name: str, fit: _Fit) -> Equivalence:
    a, b = fit.coef[1], fit.coef[0]
    if name == "sigmoid":
        return _tanh_or_sigmoid(a, b, fit.c, fit.x0, fit.max_error)
    return Equivalence(name, a, b, fit.c, -fit.c * fit.x0, fit.max_error)


def _polynomial_fit(x: torch.Tensor, y: torch.Tensor, degree: int) -> tuple[list[float], float]:
    """Coefficients (constant first) and max abs error of the least-squares polynomial."""
    powers = torch.stack([x ** k for k in range(1, degree + 1)], dim=-1).unsqueeze(0)
    coef, residual = _least_squares(powers, y)
    return coef[0].tolist(), float(residual.abs().max())


def find_equivalent(f: Activation, x_min: float = -5.0, x_max: float = 5.0, n: int = 2001, rtol: float = 1e-3,
                    atol: float = 1e-6, device: torch.device | str | None = None) -> Equivalence | None:
    """The simplest known activation that f equals up to affine maps of input and output, or None.

    f gets a 1-D float64 tensor (on `device`, CPU by default) and must act elementwise. None also when f is not
    finite on the whole grid: check `finite_on_grid` (or use `equivalence_warning`) to tell the cases apart.
    """
    if not (rtol > 0 and atol >= 0):
        raise ValueError(f"need rtol > 0 and atol >= 0, got rtol={rtol}, atol={atol}")
    x = _grid(x_min, x_max, n, device)
    y = _evaluate(f, x)
    if not torch.isfinite(y).all():
        return None
    x = x.to("cpu")
    spread = float(y.max() - y.min())
    if spread <= atol * max(1.0, float(y.abs().max())):
        return Equivalence("constant", 0.0, float(y.mean()), 1.0, 0.0, float((y - y.mean()).abs().max()))
    tolerance = rtol * spread + atol
    (b, a), error = _polynomial_fit(x, y, 1)
    if error <= tolerance:
        return Equivalence("identity", a, b, 1.0, 0.0, error)
    for family in (_RELU, _LEAKY, _ABS):
        fit = _search(family, x, y)
        if fit.max_error <= tolerance:
            found = _leaky(fit) if family is _LEAKY else _from_fit(family.name, fit)
            if found is not None:
                return found
    (r, q, p), error = _polynomial_fit(x, y, 2)  # p*x^2 + q*x + r == p*(x - x0)^2 + r - p*x0^2
    if error <= tolerance:
        vertex = -q / (2 * p)
        return Equivalence("square", p, r - p * vertex ** 2, 1.0, -vertex, error)
    matches = [(fit, family.name) for family in _SMOOTH for fit in [_search(family, x, y)]
               if fit.max_error <= tolerance]
    if not matches:
        return None
    fit, name = min(matches, key=lambda match: match[0].max_error)
    return _from_fit(name, fit)


def equivalence_warning(f: Activation, x_min: float = -5.0, x_max: float = 5.0, n: int = 2001, rtol: float = 1e-3,
                        atol: float = 1e-6, device: torch.device | str | None = None) -> str | None:
    """A one-line warning for users when f is a known activation (or constant) or is not finite; else None."""
    found = find_equivalent(f, x_min, x_max, n, rtol, atol, device)
    window = f"[{format_number(x_min)}, {format_number(x_max)}]"
    if found is not None:
        return f"the searched activation {found.describe()} on {window}"
    if not finite_on_grid(f, x_min, x_max, n, device):
        return (f"the searched activation is not finite everywhere on {window} (overflow or an invalid operation); "
                "it was not compared with known activations")
    return None
