"""How architecture weights (alphas) become operator weights: the one piece where DARTS, GDAS and DrNAS differ.

- `Softmax` (DARTS, Liu et al. 2018): a continuous relaxation, softmax(alpha).
- `HardGumbel` (GDAS, Dong & Yang 2019): a one-hot sample from Gumbel-softmax with straight-through gradients;
  only the sampled operator is computed; the temperature is annealed; the sample is drawn once per iteration
  (`resample`) and reused by the weight step and the arch step of that iteration.
- `Dirichlet` (DrNAS, Chen et al. 2021): weights are a reparameterized sample of Dir(elu(alpha) + 1), with a
  regularizer per edge: `kl`, KL(Dir(elu(alpha) + 1) || Dir(prior)) towards a flat prior; or `l2`, the penalty
  reg_scale/2 * ||alpha||^2 on alpha itself (alpha = 0 is concentration 1, the flat prior), whose gradient is what the
  reference code's Adam weight decay `reg_scale` adds. The regularizer replaces the architecture weight decay: with
  `kl` or `l2` the architect uses weight decay 0 (`arch_weight_decay`), as the reference does.
All work on a dict edge -> alpha vector and return a dict edge -> weight vector.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet as _Dir
from torch.distributions import kl_divergence

Alphas = dict[str, torch.Tensor]


class Relaxation:
    name = "base"
    hard = False  # True: the cell computes only the operator at `index[edge]`
    temperature = None

    def resample(self, alphas: Alphas) -> None:
        """Draw the randomness of one search iteration (no-op for deterministic relaxations)."""

    def weights(self, alphas: Alphas) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def expected(self, alphas: Alphas) -> dict[str, torch.Tensor]:
        """Deterministic operator weights for logging and discretization."""
        return {edge: F.softmax(a.detach(), dim=-1) for edge, a in alphas.items()}

    def regularizer(self, alphas: Alphas) -> torch.Tensor:
        return next(iter(alphas.values())).new_zeros(())

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called at the start of every search epoch (temperature schedules)."""

    def arch_weight_decay(self, requested: float) -> float:
        """The Adam weight decay of the alphas: the requested one, unless the regularizer replaces it."""
        return requested

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Softmax(Relaxation):
    name = "darts"

    def weights(self, alphas):
        return {edge: F.softmax(a, dim=-1) for edge, a in alphas.items()}


class HardGumbel(Relaxation):
    name = "gdas"
    hard = True

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1, generator: torch.Generator | None = None):
        if not tau_max >= tau_min > 0:
            raise ValueError(f"GDAS needs tau_max >= tau_min > 0, got tau_max={tau_max}, tau_min={tau_min}")
        self.tau_max, self.tau_min = tau_max, tau_min
        self.temperature = tau_max
        self.generator = generator or torch.Generator().manual_seed(0)
        self.noise: dict[str, torch.Tensor] = {}
        self.index: dict[str, int] = {}

    def set_progress(self, epoch, epochs):
        # Linear annealing from tau_max to tau_min over the search, as in GDAS.
        frac = epoch / max(epochs - 1, 1)
        self.temperature = self.tau_max - (self.tau_max - self.tau_min) * frac

    def resample(self, alphas):
        for edge, a in alphas.items():
            uniform = torch.rand(a.shape, generator=self.generator).clamp_(1e-10, 1 - 1e-10)
            self.noise[edge] = -torch.log(-torch.log(uniform)).to(a.device)
            self.index[edge] = int(torch.argmax(a.detach() + self.noise[edge]))

    def weights(self, alphas):
        if not self.noise:
            self.resample(alphas)
        out = {}
        for edge, a in alphas.items():
            soft = F.softmax((a + self.noise[edge]) / self.temperature, dim=-1)
            hard = F.one_hot(torch.tensor(self.index[edge]), a.numel()).to(soft)
            out[edge] = hard - soft.detach() + soft  # one-hot value, softmax gradient (straight-through)
        return out

    def state_dict(self):
        return {"temperature": self.temperature, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.temperature = float(state["temperature"])
        self.generator.set_state(state["generator"])


class Dirichlet(Relaxation):
    name = "drnas"

    def __init__(self, regularizer: str = "kl", reg_scale: float = 1e-3, prior: float = 1.0):
        if regularizer not in ("kl", "l2", "none"):
            raise ValueError(f"DrNAS regularizer must be 'kl', 'l2' or 'none', got {regularizer!r}")
        self.kind, self.reg_scale, self.prior = regularizer, reg_scale, prior

    @staticmethod
    def concentration(a: torch.Tensor) -> torch.Tensor:
        return F.elu(a) + 1.0

    def weights(self, alphas):
        return {edge: _Dir(self.concentration(a)).rsample() for edge, a in alphas.items()}

    def arch_weight_decay(self, requested):
        # The reference (xiangning-chen/DrNAS) sets the alphas' weight decay to 0 with the KL term and to reg_scale
        # with l2, which the `l2` regularizer below is: a second decay on top would double-count the penalty.
        return requested if self.kind == "none" else 0.0

    def expected(self, alphas):
        out = {}
        for edge, a in alphas.items():
            c = self.concentration(a.detach())
            out[edge] = c / c.sum()
        return out

    def regularizer(self, alphas):
        total = next(iter(alphas.values())).new_zeros(())
        if self.kind == "none":
            return total
        for a in alphas.values():  # one Dirichlet per edge, not one over all edges
            if self.kind == "kl":
                c = self.concentration(a)
                total = total + kl_divergence(_Dir(c), _Dir(torch.full_like(c, self.prior)))
            else:  # l2 on alpha itself, as the reference's Adam weight decay: gradient reg_scale * alpha
                total = total + 0.5 * (a ** 2).sum()
        return self.reg_scale * total


def make_relaxation(optimizer: str, *, tau_max: float = 10.0, tau_min: float = 0.1, seed: int = 0,
                    drnas_regularizer: str = "kl", drnas_reg_scale: float = 1e-3) -> Relaxation:
    if optimizer == "darts":
        return Softmax()
    if optimizer == "gdas":
        return HardGumbel(tau_max, tau_min, torch.Generator().manual_seed(seed))
    if optimizer == "drnas":
        return Dirichlet(drnas_regularizer, drnas_reg_scale)
    raise ValueError(f"unknown search optimizer {optimizer!r}; choose one of ['darts', 'drnas', 'gdas']")


def entropy(weights: torch.Tensor) -> float:
    p = weights.clamp_min(1e-12)
    return float(-(p * p.log()).sum()) / math.log(max(weights.numel(), 2))  # normalized to [0, 1]
