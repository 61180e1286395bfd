"""A supernet small enough to differentiate by hand: linear -> a mixed activation of one edge ("u1") -> linear,
with the interface the architecture and weight steps use (alpha_dict, arch/beta/weight parameters, relaxation,
cell). Subclasses write the mixed activation in `forward`."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from pipeline.search.relax import Relaxation, Softmax


class TinySupernetBase(nn.Module):
    def __init__(self, in_features: int, hidden: int, alpha: Sequence[float], beta: Optional[Sequence[float]] = None,
                 scale: float = 1.0, relaxation: Relaxation | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.first, self.last = nn.Linear(in_features, hidden), nn.Linear(hidden, 3)
        for p in self.parameters():  # drawn in creation order, before alpha and beta exist
            p.data.copy_(scale * torch.randn(p.shape, generator=g))
        self.alpha = nn.Parameter(torch.tensor(list(alpha)))
        self.beta = None if beta is None else nn.Parameter(torch.tensor(list(beta)))
        self.relaxation = relaxation or Softmax()
        self.cell = self

    def alpha_dict(self):
        return {"u1": self.alpha}

    def arch_parameters(self):
        return [self.alpha]

    def beta_parameters(self):
        return [] if self.beta is None else [self.beta]

    def weight_parameters(self):
        return [self.first.weight, self.first.bias, self.last.weight, self.last.bias]
