"""A fixed genotype's forward on the fast path (retraining): the PyTorch built-in it equals, if any; a ReLU shifted
by its beta (a common "ReLU in disguise"); else the fused cell with one candidate per edge (`pipeline/kernels/fused.py`)."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from pipeline.kernels import fused
from pipeline.kernels.fused import fused_cell
from pipeline.space.genotype import run_cell
from pipeline.space.ops import UNARY

@functools.lru_cache(maxsize=None)
def native_function(genotype) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The one built-in PyTorch function a genotype equals, if any (relu(x), x*sigmoid(x) = silu(x), ...):
    following `left`/`right`/`identity` edges, the cell reduces to one beta-free operator of x. A built-in is a
    single autograd node whose saved tensor the next layer keeps anyway, so retraining it costs what ReLU does."""
    def reduce(edge, *inputs):  # each node as ("x",), ("op", name) or ("other",)
        name = genotype.ops[genotype.edges.index(edge)]
        if len(inputs) == 1:
            if name == "identity" or inputs[0] != ("x",):
                return inputs[0] if name == "identity" else ("other",)
            return ("op", name) if name in _NATIVE_UNARY else ("other",)
        if name in ("left", "right"):
            return inputs[0] if name == "left" else inputs[1]
        return ("op", "silu") if name == "sigmul" and inputs == (("x",), ("x",)) else ("other",)

    node = run_cell(genotype.space, ("x",), reduce)
    if node == ("x",):
        return torch.clone  # the identity: a new tensor, like every other activation returns
    return UNARY[node[1]].fn if node[0] == "op" else None


# Operators whose Op.fn is one native kernel (no clamps or formulas around it).
_NATIVE_UNARY = frozenset({"relu", "silu", "gelu", "elu", "leaky_relu", "tanh", "sigmoid", "softplus", "abs", "neg",
                           "erf", "atan"})


@functools.lru_cache(maxsize=None)
def shifted_relu(genotype) -> Optional[tuple[str, float, float, str]]:
    """(g, sign, beta_sign, beta_edge) when the genotype is sign * g(x) + beta_sign * beta with g = max(x, 0) or
    min(x, 0) and beta the one parameter of edge beta_edge (e.g. relu/const/add: max(x,0) + beta), else None."""
    def reduce(edge, *inputs):  # nodes: ("x",), ("g", name), ("beta", edge), ("shifted", g, sign, beta_sign, edge)
        name = genotype.ops[genotype.edges.index(edge)]
        if name == "const":
            return ("beta", edge)
        if len(inputs) == 1:
            if name == "identity":
                return inputs[0]
            if inputs[0] == ("x",) and name in ("relu", "min0"):
                return ("g", name)
            if name == "shift" and inputs[0][0] == "g":
                return ("shifted", inputs[0][1], 1.0, 1.0, edge)
            return ("other",)
        if name in ("left", "right"):
            return inputs[0] if name == "left" else inputs[1]
        kinds = tuple(node[0] for node in inputs)
        if name in ("add", "sub") and kinds in (("g", "beta"), ("beta", "g")):
            g, beta = inputs if kinds == ("g", "beta") else inputs[::-1]
            # g - beta negates beta; beta - g negates g.
            sign, beta_sign = (1.0, 1.0) if name == "add" else (1.0, -1.0) if kinds[0] == "g" else (-1.0, 1.0)
            return ("shifted", g[1], sign, beta_sign, beta[1])
        return ("other",)

    node = run_cell(genotype.space, ("x",), reduce)
    return node[1:] if node[0] == "shifted" else None


class _ShiftedRelu(torch.autograd.Function):
    """sign * g(x) + beta_sign * beta, g = max(x, 0) or min(x, 0), saving only its output, which the next layer
    keeps anyway: which piece x was on follows from it (for max: x > 0 iff sign * (out - beta_sign * beta) > 0).
    The one difference from autograd through the formula: where x is so small that beta + x rounds to beta
    (|x| < |beta| * 6e-8 in float32), the gradient is that of x = 0."""

    @staticmethod
    def forward(ctx, x, beta, g: str, sign: float, beta_sign: float):
        piece = torch.clamp_min(x, 0.0) if g == "relu" else torch.clamp_max(x, 0.0)
        out = (piece if sign > 0 else piece.neg_()).add_(beta if beta_sign > 0 else -beta)
        ctx.save_for_backward(out, beta)
        ctx.g, ctx.sign, ctx.beta_sign = g, sign, beta_sign
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        out, beta = ctx.saved_tensors
        grad_x = grad_beta = None
        if ctx.needs_input_grad[0]:
            reference = beta if ctx.beta_sign > 0 else -beta
            # Where g'(x) = 1: the output lies above the reference for sign * max(x, 0) and -min(x, 0), below it
            # for -max(x, 0) and min(x, 0). Masks multiply: torch.where is not vectorized on CPU (7x slower).
            if (ctx.sign > 0) != (ctx.g == "relu"):
                grad_x = grad * (out < reference)
            elif reference.dim() == 0 and reference.device.type == "cpu":  # ReLU's own one-pass backward kernel
                grad_x = torch.ops.aten.threshold_backward(grad, out, reference.item())
            else:
                grad_x = grad * (out > reference)
            grad_x = grad_x if ctx.sign > 0 else grad_x.neg_()
        if ctx.needs_input_grad[1]:
            grad_beta = grad.sum_to_size(beta.shape)
            grad_beta = grad_beta if ctx.beta_sign > 0 else -grad_beta
        return grad_x, grad_beta, None, None, None


def genotype_forward(activation, x: torch.Tensor) -> torch.Tensor:
    """`GenotypeActivation.forward` on the fast path: a built-in function when the genotype is one, a shifted
    ReLU (float32/64) when it is one, else the fused cell with one candidate (weight 1) per edge, compiled in
    "auto" mode for batches of 64 and more."""
    genotype = activation.genotype
    native = native_function(genotype)
    if native is not None:
        return native(x)
    shifted = shifted_relu(genotype)
    # Under bf16/fp16 autocast, out rounds too coarsely to tell the pieces apart: the fused cell keeps d out / dx.
    if shifted is not None and x.dtype in (torch.float32, torch.float64):
        g, sign, beta_sign, edge = shifted
        return _ShiftedRelu.apply(x, activation.beta[edge], g, sign, beta_sign)
    betas = [[activation.beta[edge] if edge in activation.beta else None] for edge in genotype.edges]
    return fused_cell(genotype.space, [(name,) for name in genotype.ops], [None] * len(genotype.ops), betas, x)


def fast_forward(activation, x: torch.Tensor) -> torch.Tensor:
    """The kernel a retraining network gives its `GenotypeActivation`s: the fast path while the fused mode is on
    (a built-in function if the genotype is one, else the fused cell: same values), else the plain cell."""
    if fused.enabled():
        return genotype_forward(activation, x)
    return activation.plain_forward(x)
