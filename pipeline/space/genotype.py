"""The genotype: one concrete activation function, as a small immutable value.

Spaces (edges in evaluation order):
- simple:  b1(u1(x), u2(x))
- complex: b2(u3(b1(u1(x), u2(x))), u4(x))
A genotype names the operator on every edge and the learned beta of each operator that has one. It saves to and
loads from JSON, prints its formula (simplified with sympy) and builds a fixed `nn.Module` activation.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import sympy
import torch
from torch import nn

from pipeline.space.ops import BINARY, UNARY, Op, get_op, x_

SPACES: dict[str, tuple[tuple[str, int], ...]] = {
    "simple": (("u1", 1), ("u2", 1), ("b1", 2)),
    "complex": (("u1", 1), ("u2", 1), ("b1", 2), ("u3", 1), ("u4", 1), ("b2", 2)),
}
BETA_MODES = ("scalar", "channel")
BETA_SHARING = ("shared", "per_site")  # retraining: one set of betas per network, or one per activation site
# Operators that are known activations: a formula names them (gelu(x)) instead of expanding them (erf, Piecewise).
NAMED_ACTIVATIONS = ("relu", "gelu", "elu", "silu", "softplus", "leaky_relu")


KEYS = ("space", "ops", "betas")  # a genotype's JSON object holds these and nothing else


class GenotypeError(ValueError):
    """A genotype (built, read from a dict or a file) that is no valid activation; the message names the fault."""


def edges_of(space: str) -> tuple[str, ...]:
    if space not in SPACES:
        raise ValueError(f"unknown search space {space!r}; choose one of {sorted(SPACES)}")
    return tuple(edge for edge, _ in SPACES[space])


def run_cell(space: str, x, apply_edge: Callable):
    """Walk the cell graph once. `apply_edge(edge, *inputs)` computes one edge; it works on tensors (forward
    passes) and on sympy expressions (formulas) alike, so the graph is written down in exactly one place."""
    u1, u2 = apply_edge("u1", x), apply_edge("u2", x)
    b1 = apply_edge("b1", u1, u2)
    if space == "simple":
        return b1
    return apply_edge("b2", apply_edge("u3", b1), apply_edge("u4", x))


def _round_floats(expr: sympy.Expr, digits: int = 4) -> sympy.Expr:
    """Learned betas to `digits` significant digits; whole numbers become integers (1.0*x reads x)."""

    def rounded(value: float) -> sympy.Expr:
        value = float(f"{value:.{digits}g}")
        return sympy.Integer(int(value)) if value.is_integer() else sympy.Float(value, digits)

    return expr.xreplace({n: rounded(float(n)) for n in expr.atoms(sympy.Float)})


def to_text(expr: sympy.Expr) -> str:
    """Plain-text formula: sympy's printer with lower-case max/min, as users write them."""
    return re.sub(r"\b(Max|Min|Abs)\(", lambda m: m.group(1).lower() + "(", sympy.sstr(expr))


@dataclass(frozen=True)
class Genotype:
    space: str
    ops: tuple[str, ...]  # one operator per edge, in `edges_of(space)` order
    betas: tuple[Optional[float], ...]  # the chosen operator's beta per edge; None where it has none

    def __post_init__(self):
        if self.space not in SPACES:
            raise GenotypeError(f"unknown search space {self.space!r}; choose one of {sorted(SPACES)}")
        edges = edges_of(self.space)
        object.__setattr__(self, "ops", tuple(self.ops))
        betas = tuple(self.betas) if self.betas else tuple(None for _ in edges)
        object.__setattr__(self, "betas", betas)
        if len(self.ops) != len(edges) or len(self.betas) != len(edges):
            raise GenotypeError(f"a {self.space} genotype has {len(edges)} edges {edges}, got ops={self.ops} "
                                f"betas={self.betas}")
        for (edge, arity), name, beta in zip(SPACES[self.space], self.ops, self.betas):
            registry = UNARY if arity == 1 else BINARY
            if not isinstance(name, str) or name not in registry:
                kind = "unary" if arity == 1 else "binary"
                raise GenotypeError(f"edge {edge} needs a {kind} operator, got {name!r}; allowed: {sorted(registry)}")
            if registry[name].has_beta and beta is None:
                raise GenotypeError(f"edge {edge}: operator {name!r} needs a beta value")
            if not registry[name].has_beta and beta is not None:  # it would be ignored: the file says otherwise
                raise GenotypeError(f"edge {edge}: operator {name!r} takes no beta, got {beta!r}; remove the beta "
                                    f"of {edge}")
            if beta is not None and (isinstance(beta, bool) or not isinstance(beta, numbers.Real)
                                     or not math.isfinite(beta)):
                raise GenotypeError(f"edge {edge}: the beta of {name!r} must be a finite number, got {beta!r}")
        object.__setattr__(self, "betas", tuple(None if b is None else float(b) for b in self.betas))

    @classmethod
    def with_default_betas(cls, space: str, ops: tuple[str, ...]) -> "Genotype":
        return cls(space, tuple(ops), tuple(get_op(n).beta_init for n in ops))

    @property
    def edges(self) -> tuple[str, ...]:
        return edges_of(self.space)

    def edge_op(self, edge: str) -> tuple[Op, Optional[float]]:
        i = self.edges.index(edge)
        return get_op(self.ops[i]), self.betas[i]

    # --- serialization -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"space": self.space, "ops": dict(zip(self.edges, self.ops)),
                "betas": {e: b for e, b in zip(self.edges, self.betas) if b is not None}}

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        """The genotype `to_dict` wrote; anything it would not write (an unknown key or edge, a beta on an operator
        without one) is refused rather than ignored."""
        if not isinstance(data, dict) or "space" not in data or "ops" not in data:
            raise GenotypeError(f"not a genotype (needs 'space', 'ops' per edge, 'betas'): {data!r}")
        unknown = sorted(set(data) - set(KEYS), key=str)
        if unknown:
            raise GenotypeError(f"unknown genotype keys {unknown}; a genotype holds only {list(KEYS)}")
        if data["space"] not in SPACES:
            raise GenotypeError(f"unknown search space {data['space']!r}; choose one of {sorted(SPACES)}")
        edges, ops, betas = edges_of(data["space"]), data["ops"], data.get("betas", {})
        for key, per_edge in (("ops", ops), ("betas", betas)):
            if not isinstance(per_edge, dict):
                raise GenotypeError(f"genotype {key!r} must map edges to values, got {per_edge!r}")
            extra = sorted(set(per_edge) - set(edges), key=str)
            if extra:
                raise GenotypeError(f"genotype {key!r} names edges {extra} that a {data['space']} genotype does "
                                    f"not have; its edges: {list(edges)}")
        missing = [edge for edge in edges if edge not in ops]
        if missing:
            raise GenotypeError(f"not a genotype: 'ops' has no operator for the edges {missing}")
        return cls(data["space"], tuple(ops[e] for e in edges), tuple(betas.get(e) for e in edges))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, ValueError) as err:
            raise GenotypeError(f"cannot read genotype file {path}: {err}") from err

    # --- formulas -----------------------------------------------------------------------------------------
    def expr(self, symbolic_betas: bool = False, named: bool = False) -> sympy.Expr:
        """The function as a sympy expression in x (betas as numbers, or as symbols beta_<edge>). `named`: an
        operator that is a known activation stays a function of that name (`gelu(x)`), as formulas print it;
        otherwise it is expanded (`Piecewise(...)`, `erf(...)`), which is what numeric analysis evaluates."""

        def apply(edge, *inputs):
            op, beta = self.edge_op(edge)
            if named and op.name in NAMED_ACTIVATIONS:
                return sympy.Function(op.name, real=True)(*inputs)
            b = sympy.Symbol(f"beta_{edge}", real=True) if symbolic_betas else sympy.Float(beta or 0.0)
            return op.sym(*inputs, b)

        return run_cell(self.space, x_, apply)

    def simplified(self) -> sympy.Expr:
        """The named expression simplified (terms merged, identities dropped; a named activation is never
        expanded), its numbers rounded to 4 significant digits."""
        return _round_floats(sympy.simplify(_round_floats(self.expr(named=True), 12)))

    def formula(self) -> str:
        """The one printed form of the function, used by logs, MLflow tags, summary.json, the discretize outputs
        and the reports alike: `max(elu(elu(x)), sqrt(max(0.001, x)))`."""
        return to_text(self.simplified())

    def latex(self) -> str:
        return sympy.latex(self.simplified())

    def __str__(self) -> str:
        return f"{self.space}({', '.join(f'{e}={o}' for e, o in zip(self.edges, self.ops))})"

    # --- modules ------------------------------------------------------------------------------------------
    def build(self, channels: int = 1, beta_mode: str = "scalar", train_betas: bool = True,
              kernel: Optional[Callable] = None, betas: Optional[nn.ParameterDict] = None,
              beta_bound: Optional[float] = None) -> nn.Module:
        return GenotypeActivation(self, channels, beta_mode, train_betas, kernel, betas, beta_bound)

    def factory(self, beta_mode: str = "scalar", train_betas: bool = True, kernel: Optional[Callable] = None,
                betas: str = "shared", beta_bound: Optional[float] = None):
        """An activation factory for `pipeline.space.models.build_resnet`; `kernel(activation, x)`, if given,
        replaces the plain forward (the retraining fast path, `pipeline.kernels.fused_genotype.fast_forward`).

        `betas`: `shared` (one set of betas for the whole network, handed to every site, as the search shares
        them: the retrained function is the searched one) or `per_site` (each site its own copy).
        `beta_bound`: trained betas are projected into [-bound, bound] before every forward, as the search
        projects them (search.beta_clamp), so retraining cannot take a beta where the search never looked."""
        if betas not in BETA_SHARING:
            raise ValueError(f"unknown beta sharing {betas!r}; choose one of {BETA_SHARING}")
        if betas == "per_site":
            return lambda channels: self.build(channels, beta_mode, train_betas, kernel, beta_bound=beta_bound)
        if beta_mode != "scalar":
            raise ValueError(f"shared betas are scalars (sites differ in channels); beta mode {beta_mode!r} "
                             "needs per-site betas")
        shared = make_betas(self, beta_mode, 1, train_betas)
        return lambda channels: self.build(channels, beta_mode, train_betas, kernel, shared, beta_bound)

    def function(self):
        """The genotype as a plain float64 function of a tensor, for analysis and plots."""
        module = self.build().double()
        return lambda x: module(x.double())


def beta_shape(beta_mode: str, channels: int) -> tuple[int, ...]:
    if beta_mode not in BETA_MODES:
        raise ValueError(f"unknown beta mode {beta_mode!r}; choose one of {BETA_MODES}")
    return () if beta_mode == "scalar" else (channels, 1, 1)


def make_betas(genotype: Genotype, beta_mode: str, channels: int, train_betas: bool) -> nn.ParameterDict:
    """The genotype's betas as parameters, one per edge whose operator has one, starting from the genotype's
    values (the searched ones)."""
    return nn.ParameterDict({
        edge: nn.Parameter(torch.full(beta_shape(beta_mode, channels), float(beta)), requires_grad=train_betas)
        for edge, beta in zip(genotype.edges, genotype.betas) if beta is not None
    })


class GenotypeActivation(nn.Module):
    """A fixed activation function: the genotype's operators, its betas as (optionally trainable) parameters."""

    def __init__(self, genotype: Genotype, channels: int = 1, beta_mode: str = "scalar", train_betas: bool = True,
                 kernel: Optional[Callable] = None, betas: Optional[nn.ParameterDict] = None,
                 beta_bound: Optional[float] = None):
        super().__init__()
        if beta_bound is not None and not beta_bound > 0:
            raise ValueError(f"beta_bound must be positive (or None: unbounded), got {beta_bound!r}")
        self.beta_bound = beta_bound
        self.genotype = genotype
        # The space layer knows no kernels: the code that builds a network passes the fast path in.
        self.kernel = kernel
        self.ops = {edge: get_op(name) for edge, name in zip(genotype.edges, genotype.ops)}
        # Given betas are shared with other sites (the same Parameters: model.parameters() lists them once).
        self.beta = betas if betas is not None else make_betas(genotype, beta_mode, channels, train_betas)

    def _apply_edge(self, edge, *inputs):
        return self.ops[edge].fn(*inputs, self.beta[edge] if edge in self.beta else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta_bound is not None:
            with torch.no_grad():  # projected before every forward, as the search's pre-hook does (eval included:
                # the last optimizer step comes after the last training forward)
                for beta in self.beta.values():
                    if beta.requires_grad:
                        beta.clamp_(-self.beta_bound, self.beta_bound)
        if self.kernel is not None:
            return self.kernel(self, x)
        return self.plain_forward(x)

    def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_cell(self.genotype.space, x, self._apply_edge)

    def extra_repr(self) -> str:
        return str(self.genotype)


# Baselines are genotypes too, so every activation goes through one evaluation path.
RELU = Genotype("simple", ("relu", "zero", "left"), (None, None, None))
SWISH = Genotype("simple", ("identity", "identity", "sigmul"), (None, None, None))
BASELINES = {"relu": RELU, "swish": SWISH}
