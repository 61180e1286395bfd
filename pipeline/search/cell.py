"""The searchable activation cell and the supernet: a CIFAR ResNet whose every activation is a mixed cell.

One `SearchCell` holds the alphas of the network (shared by every activation site: the search finds one function
per network) and, in `scalar` beta mode, the betas too. Each site is a `MixedActivation`; in `channel` beta mode
it owns per-channel betas. Operator weights come from outside, from a `Relaxation`: the supernet computes them
once per forward pass (or each site draws its own sample, DrNAS's per-site option).

Progressive shrinking (`pipeline.search.shrink`) masks candidates: a mask per edge, a buffer (so it is in the
state dict, the checkpoint and the saved supernet). Everything downstream sees only the remaining candidates:
`alpha_dict` gives their alphas (the relaxation renormalises over them), `active` their names, and the sites
compute only them. `warm_relu` makes every site a plain ReLU (GRAFS's warm start of the weights).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.kernels import fused
from pipeline.kernels.fused_genotype import fast_forward
from pipeline.space.genotype import SPACES, Genotype, beta_shape, edges_of, run_cell
from pipeline.space.models import build_resnet
from pipeline.space.ops import BINARY, UNARY, resolve_op_set
from pipeline.search.fused_site import supernet_site
from pipeline.search.relax import Relaxation
from pipeline.search.shrink import choose_drops


def _beta_key(edge: str, op: str) -> str:
    return f"{edge}__{op}"


# --- beta options (GRAFS, Strack et al. 2024) -------------------------------------------------------------------
BETA_INITS = ("default", "grafs")
GRAFS_BETA_MEAN, GRAFS_BETA_STD = 1.0, 0.25


def initial_beta(op, beta_init: str, shape: tuple[int, ...]) -> torch.Tensor:
    """An operator's starting beta: its registry value (`default`), or under `grafs` a draw from N(1, 0.25) per
    element, as GRAFS starts its BetaMul, BetaAdd and Beta; `interp` keeps its 0 (GRAFS's BetaMix, an even mix
    sigmoid(0) = 1/2) and the legacy `interp_lin` its 0.5 (the same mix). Draws use the global generator, seeded by
    the search."""
    if beta_init not in BETA_INITS:
        raise ValueError(f"unknown beta init {beta_init!r}; choose one of {BETA_INITS}")
    if beta_init == "grafs" and op.name not in ("interp", "interp_lin"):
        return torch.normal(GRAFS_BETA_MEAN, GRAFS_BETA_STD, size=shape)
    return torch.full(shape, op.beta_init)


def project_betas(bound: float):
    """A forward pre-hook that projects every beta into [-bound, bound] in place before the supernet runs, so each
    forward (weight step, architecture step, evaluation) sees bounded betas while the gradient stays live at the
    bound (a functional clamp would zero it there for good)."""
    def hook(supernet, inputs):
        with torch.no_grad():
            for beta in supernet.beta_parameters():
                beta.clamp_(-bound, bound)
    return hook
def _mask_key(edge: str) -> str:
    return f"mask_{edge}"


class SearchCell(nn.Module):
    """Alphas (one vector per edge) and shared scalar betas; no forward of its own."""

    def __init__(self, space: str, op_set, relaxation: Relaxation, beta_mode: str = "scalar",
                 per_site_sample: bool = False, alpha_init_std: float = 1e-3, beta_init: str = "default"):
        super().__init__()
        self.beta_init = beta_init
        unary, binary = resolve_op_set(op_set)
        self.space, self.beta_mode, self.relaxation = space, beta_mode, relaxation
        self.per_site_sample = per_site_sample
        self.candidates = {edge: (unary if arity == 1 else binary) for edge, arity in SPACES[space]}
        self.registry = {edge: (UNARY if arity == 1 else BINARY) for edge, arity in SPACES[space]}
        self.alphas = nn.ParameterDict({
            edge: nn.Parameter(alpha_init_std * torch.randn(len(names))) for edge, names in self.candidates.items()
        })
        beta_shape(beta_mode, 1)  # validates the mode
        self.betas = self.make_betas(channels=1) if beta_mode == "scalar" else nn.ParameterDict()
        self._weights: Optional[dict[str, torch.Tensor]] = None
        for edge, names in self.candidates.items():
            self.register_buffer(_mask_key(edge), torch.ones(len(names), dtype=torch.bool))
        self.warm_relu = False  # True: every site computes max(x, 0) (warm start of the weights)
        self._refresh_active()
        # The names live on the host: reading a CUDA mask in every forward pass would synchronise the device.
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_active())

    # --- the candidate mask (progressive shrinking) ---------------------------------------------------------
    def mask(self, edge: str) -> torch.Tensor:
        return getattr(self, _mask_key(edge))

    def _refresh_active(self) -> None:
        self._active = {edge: tuple(n for n, keep in zip(names, self.mask(edge).tolist()) if keep)
                        for edge, names in self.candidates.items()}
        self._full = {edge: len(self._active[edge]) == len(names) for edge, names in self.candidates.items()}
        self._keeps = {edge: tuple(self.mask(edge).tolist()) for edge in self.candidates}
        self._index: dict[tuple[str, torch.device], torch.Tensor] = {}

    def keeps(self, edge: str) -> tuple[bool, ...]:
        """The mask of `edge` on the host: per candidate, whether it remains."""
        return self._keeps[edge]

    def active_index(self, edge: str, device: torch.device) -> torch.Tensor:
        """Positions of the remaining candidates of `edge` among all of them (cached per device)."""
        key = (edge, torch.device(device))
        if key not in self._index:
            self._index[key] = torch.tensor([k for k, keep in enumerate(self._keeps[edge]) if keep], device=device)
        return self._index[key]

    def active(self, edge: str) -> tuple[str, ...]:
        """The remaining candidates of `edge`, in registry order."""
        return self._active[edge]

    def set_active(self, edge: str, names) -> None:
        """Keep exactly `names` on `edge` (perturbation-based selection masks and restores candidates)."""
        names = set(names)
        unknown = names - set(self.candidates[edge])
        if unknown or not names:
            raise ValueError(f"edge {edge}: cannot keep {sorted(names)}; its candidates are {self.candidates[edge]}")
        with torch.no_grad():
            self.mask(edge).copy_(torch.tensor([n in names for n in self.candidates[edge]]))
        self._refresh_active()

    def masks(self) -> dict[str, list[bool]]:
        return {edge: self.mask(edge).tolist() for edge in self.candidates}

    def drop(self, count: int) -> list[tuple[str, str]]:
        """Mask `count` operators (see `pipeline.search.shrink.choose_drops`); returns (edge, operator) pairs."""
        if count <= 0:
            return []
        expected = self.expected_weights()
        weights = {}
        for edge, names in self.candidates.items():  # full-length vectors, dropped candidates as +inf
            full = [float("inf")] * len(names)
            for name, w in zip(self.active(edge), expected[edge].tolist()):
                full[names.index(name)] = w
            weights[edge] = full
        chosen = choose_drops(weights, self.masks(), count)
        with torch.no_grad():
            for edge, k in chosen:
                self.mask(edge)[k] = False
        self._refresh_active()
        return [(edge, self.candidates[edge][k]) for edge, k in chosen]

    def make_betas(self, channels: int) -> nn.ParameterDict:
        return nn.ParameterDict({
            _beta_key(edge, name): nn.Parameter(initial_beta(self.registry[edge][name], self.beta_init,
                                                             beta_shape(self.beta_mode, channels)))
            for edge, names in self.candidates.items() for name in names if self.registry[edge][name].has_beta
        })

    def alpha_dict(self) -> dict[str, torch.Tensor]:
        """The alphas of the remaining candidates (all of them before shrinking), in `active` order."""
        return {edge: a if self._full[edge] else a[self.mask(edge)] for edge, a in self.alphas.items()}

    @contextlib.contextmanager
    def forward_pass(self):
        """Operator weights for one network forward pass: one sample shared by every site, unless per-site."""
        self._weights = None if self.per_site_sample else self.relaxation.weights(self.alpha_dict())
        try:
            yield
        finally:
            self._weights = None

    def edge_weights(self) -> dict[str, torch.Tensor]:
        if self._weights is not None:
            return self._weights
        return self.relaxation.weights(self.alpha_dict())

    def expected_weights(self) -> dict[str, torch.Tensor]:
        return self.relaxation.expected(self.alpha_dict())


class MixedActivation(nn.Module):
    """One activation site: every edge is a weighted sum of its candidate operators."""

    def __init__(self, cell: SearchCell, channels: int):
        super().__init__()
        # A plain reference, not a submodule: the shared cell must appear once in the state dict, not per site.
        self.__dict__["cell"] = cell
        self.site_betas = cell.make_betas(channels) if cell.beta_mode == "channel" else nn.ParameterDict()

    def beta(self, edge: str, op: str) -> Optional[torch.Tensor]:
        key = _beta_key(edge, op)
        betas = self.site_betas if self.cell.beta_mode == "channel" else self.cell.betas
        return betas[key] if key in betas else None

    def _mixed_edge(self, weights, edge, *inputs):
        names, registry, w = self.cell.active(edge), self.cell.registry[edge], weights[edge]
        if self.cell.relaxation.hard:  # GDAS: compute only the sampled operator
            k = self.cell.relaxation.index[edge]
            return w[k] * registry[names[k]].fn(*inputs, self.beta(edge, names[k]))
        out = 0.0
        for k, name in enumerate(names):
            out = out + w[k] * registry[name].fn(*inputs, self.beta(edge, name))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cell.warm_relu:
            return F.relu(x)
        weights = self.cell.edge_weights()
        if fused.enabled():  # the same cell as one autograd node with closed-form derivatives (much faster)
            return supernet_site(self, weights, x)
        return run_cell(self.cell.space, x, lambda edge, *inputs: self._mixed_edge(weights, edge, *inputs))


class Supernet(nn.Module):
    """A CIFAR ResNet whose activations are mixed cells sharing one set of alphas."""

    def __init__(self, network: str, space: str, op_set, relaxation: Relaxation, beta_mode: str = "scalar",
                 per_site_sample: bool = False, beta_init: str = "default", beta_clamp: Optional[float] = None):
        super().__init__()
        self.network_name = network
        self.cell = SearchCell(space, op_set, relaxation, beta_mode, per_site_sample, beta_init=beta_init)
        self.net = build_resnet(network, lambda channels: MixedActivation(self.cell, channels))
        if beta_clamp is not None:
            self.register_forward_pre_hook(project_betas(beta_clamp))

    @property
    def relaxation(self) -> Relaxation:
        return self.cell.relaxation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.cell.forward_pass():
            return self.net(x)

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.cell.alphas.values())

    def beta_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if "betas." in name]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Network weights: everything but alphas and betas."""
        special = {id(p) for p in self.arch_parameters() + self.beta_parameters()}
        return [p for p in self.parameters() if id(p) not in special]

    def sites(self) -> list[MixedActivation]:
        return [m for m in self.net.modules() if isinstance(m, MixedActivation)]

    def learned_betas(self) -> dict[str, float]:
        """Every candidate's beta, averaged over channels and sites (the per-channel mode's summary)."""
        if self.cell.beta_mode == "scalar":
            return {k: float(v.detach().mean()) for k, v in self.cell.betas.items()}
        sums: dict[str, list[float]] = {}
        for site in self.sites():
            for k, v in site.site_betas.items():
                sums.setdefault(k, []).append(float(v.detach().mean()))
        return {k: sum(v) / len(v) for k, v in sums.items()}

    def genotype(self) -> Genotype:
        """Discretize: the operator with the largest expected weight on every edge, with its learned beta."""
        expected, betas = self.cell.expected_weights(), self.learned_betas()
        ops, chosen_betas = [], []
        for edge in edges_of(self.cell.space):
            name = self.cell.active(edge)[int(torch.argmax(expected[edge]))]
            ops.append(name)
            chosen_betas.append(betas.get(_beta_key(edge, name)) if self.cell.registry[edge][name].has_beta else None)
        return Genotype(self.cell.space, tuple(ops), tuple(chosen_betas))

    def operator_weights(self) -> dict[str, dict[str, float]]:
        """Every candidate's expected weight; 0 for a dropped one (the keys stay the same every epoch)."""
        expected = self.cell.expected_weights()
        out = {}
        for edge in edges_of(self.cell.space):
            remaining = dict(zip(self.cell.active(edge), expected[edge].tolist()))
            out[edge] = {name: float(remaining.get(name, 0.0)) for name in self.cell.candidates[edge]}
        return out


def discretized_network(supernet: Supernet, genotype: Genotype, train_betas: bool = True) -> nn.Module:
    """The supernet's network with the genotype's fixed activation, keeping the supernet's network weights."""
    mode = supernet.cell.beta_mode  # as searched: scalar betas shared by every site, channel betas per site
    net = build_resnet(supernet.network_name, genotype.factory(mode, train_betas, fast_forward,
                                                               "shared" if mode == "scalar" else "per_site"))
    weights = {k: v for k, v in supernet.net.state_dict().items() if ".site_betas." not in k}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(".beta." in k for k in missing), (missing, unexpected)
    return net.to(next(supernet.parameters()).device)
