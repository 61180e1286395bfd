"""The known activations a searched function is compared with, and the result of a match.

`KNOWN_ACTIVATIONS` names the candidates; `Equivalence` holds a fitted ``f(x) ~= a * g(c * x + d) + b`` and
writes it as a formula and as a sentence for users. The fitting itself is in `pipeline.analysis.equivalence`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


# name -> torch callable (elementwise, any float dtype). leaky_relu holds torch's default slope 0.01; the
# search fits the slope and `Equivalence.slope` carries it. "constant" is not a function of x: handled apart.
KNOWN_ACTIVATIONS: dict[str, Activation] = {
    "identity": torch.nn.Identity(),  # reported for any affine function a*x + b
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "swish": F.silu,  # x * sigmoid(x), a.k.a. SiLU
    "gelu": F.gelu,  # exact (erf) GELU
    "elu": F.elu,  # alpha = 1
    "softplus": F.softplus,  # log(1 + exp(x))
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "abs": torch.abs,
    "square": torch.square,
}

_DISPLAY = {"identity": "identity", "relu": "ReLU", "leaky_relu": "leaky ReLU", "swish": "Swish (SiLU)",
            "gelu": "GELU", "elu": "ELU", "softplus": "softplus", "sigmoid": "sigmoid", "tanh": "tanh",
            "abs": "absolute value", "square": "square"}
_PARAM_TOL = 1e-4  # a fitted scale within this of +-1 counts as unscaled, a shift this small (relative) as none


def format_number(value: float) -> str:
    return f"{value:.4g}"


def _is_unit(scale: float) -> bool:
    return abs(abs(scale) - 1) <= _PARAM_TOL


def _is_negligible(shift: float, scale: float) -> bool:
    return abs(shift) <= _PARAM_TOL * max(1.0, abs(scale))


def _affine_text(scale: float, term: str, shift: float) -> str:
    """scale*term + shift, leaving out a unit scale and a negligible shift: "-relu(-x) + 0.37"."""
    text = ("-" if scale < 0 else "") + term if _is_unit(scale) else f"{format_number(scale)}*{term}"
    if not _is_negligible(shift, scale):
        text += f" - {format_number(-shift)}" if shift < 0 else f" + {format_number(shift)}"
    return text


def _map_words(side: str, scale: float, shift: float) -> str:
    words = ["sign-flipped"] if scale < 0 else []
    if not _is_unit(scale):
        words.append(f"scaled by {format_number(abs(scale))}")
    if not _is_negligible(shift, scale):
        words.append(f"shifted by {format_number(shift)}")
    return f"{side} {', '.join(words)}" if words else ""


@dataclass(frozen=True)
class Equivalence:
    """``f(x) ~= a * g(c * x + d) + b`` on the grid, g = KNOWN_ACTIVATIONS[name] ("constant": f = b, a = 0)."""

    name: str
    a: float
    b: float
    c: float
    d: float
    max_error: float  # max |f - fit| on the grid
    slope: float | None = None  # leaky_relu's fitted negative slope

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted expression, to compare with f anywhere."""
        if self.name == "constant":
            return torch.full_like(x, self.b)
        u = self.c * x + self.d
        g = F.leaky_relu(u, self.slope) if self.name == "leaky_relu" else KNOWN_ACTIVATIONS[self.name](u)
        return self.a * g + self.b

    def formula(self) -> str:
        if self.name == "constant":
            return format_number(self.b)
        inner = _affine_text(self.c, "x", self.d)
        if self.name == "identity":
            return _affine_text(self.a, inner, self.b)
        if self.slope is not None:
            inner += f", negative_slope={format_number(self.slope)}"
        return _affine_text(self.a, f"{self.name}({inner})", self.b)

    def describe(self) -> str:
        """A sentence naming the known activation and the map: scaled, shifted, sign-flipped input or output."""
        error = f"(max error {self.max_error:.2g})"
        if self.name == "constant":
            return f"is constant: {self.formula()} {error}"
        if self.name == "identity":
            return f"is affine: {self.formula()}, the identity scaled and shifted {error}"
        display = _DISPLAY[self.name] + (f" (negative slope {format_number(self.slope)})"
                                         if self.slope is not None else "")
        changes = [part for part in (_map_words("input", self.c, self.d), _map_words("output", self.a, self.b))
                   if part]
        how = f" with {' and '.join(changes)}" if changes else ""
        article = "an" if display[0].lower() in "aeiou" else "a"
        return f"equals {self.formula()}: {article} {display}{how} {error}"
