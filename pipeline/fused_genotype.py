"""A fixed genotype's forward on the fast path (retraining): the PyTorch built-in it equals, if any, else the fused
cell with one candidate per edge (`pipeline/fused.py`)."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from pipeline.fused import fused_cell

@functools.lru_cache(maxsize=None)
def native_function(genotype) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The one built-in PyTorch function a genotype equals, if any (relu(x), x*sigmoid(x) = silu(x), ...):
    following `left`/`right`/`identity` edges, the cell reduces to one beta-free operator of x. A built-in is a
    single autograd node whose saved tensor the next layer keeps anyway, so retraining it costs what ReLU does."""
    from pipeline.genotype import run_cell
    from pipeline.ops import UNARY

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


def genotype_forward(activation, x: torch.Tensor) -> torch.Tensor:
    """`GenotypeActivation.forward` on the fast path: a built-in function when the genotype is one, else the
    fused cell with one candidate (weight 1) per edge, compiled in "auto" mode for batches of 64 and more."""
    genotype = activation.genotype
    native = native_function(genotype)
    if native is not None:
        return native(x)
    betas = [[activation.beta[edge] if edge in activation.beta else None] for edge in genotype.edges]
    return fused_cell(genotype.space, [(name,) for name in genotype.ops], [None] * len(genotype.ops), betas, x,
                      fixed_ops=True)
