"""The architecture step of bilevel search, kept apart from the network (as in DARTS).

Alphas (and, if `betas_with == "arch"`, the betas) are updated with Adam on a validation batch. Gradients are
taken with `torch.autograd.grad` on exactly those parameters, so a validation batch never leaks gradients into
the network weights. Second-order DARTS differentiates through one virtual SGD step of the weights, with the
Hessian-vector product approximated by finite differences (Liu et al. 2018, eq. 7-8).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from pipeline.search.cell import Supernet


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


class Architect:
    def __init__(self, supernet: Supernet, *, lr: float, betas: tuple[float, float], weight_decay: float,
                 train_betas: bool, second_order: bool = False,
                 autocast: Callable = lambda: torch.autocast("cpu", enabled=False)):
        self.supernet = supernet
        alphas, betas_ = supernet.arch_parameters(), (supernet.beta_parameters() if train_betas else [])
        self.params = alphas + betas_
        # DrNAS with a regularizer takes no weight decay on the alphas on top of it (the relaxation decides, see
        # relax.py); operator betas trained here keep the requested decay.
        groups = [{"params": alphas, "weight_decay": supernet.relaxation.arch_weight_decay(weight_decay)}]
        if betas_:
            groups.append({"params": betas_, "weight_decay": weight_decay})
        self.optimizer = torch.optim.Adam(groups, lr=lr, betas=betas)
        self.second_order = second_order
        self.autocast = autocast

    def _loss(self, x, y) -> torch.Tensor:
        with self.autocast():
            logits = self.supernet(x)
        loss = F.cross_entropy(logits.float(), y)
        return loss + self.supernet.relaxation.regularizer(self.supernet.cell.alpha_dict())

    def step(self, x_val, y_val, x_train=None, y_train=None, weight_lr: float = 0.0,
             weight_decay: float = 0.0) -> Optional[float]:
        """One update of the architecture parameters; returns the validation loss, or None if the step was
        skipped because the loss or a gradient was not finite."""
        if self.second_order:
            loss, grads = self._unrolled_grads(x_val, y_val, x_train, y_train, weight_lr, weight_decay)
        else:
            loss = self._loss(x_val, y_val)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        if not (torch.isfinite(loss) and _all_finite(grads)):
            return None
        for p, g in zip(self.params, grads):
            p.grad = None if g is None else g.detach()
        self.optimizer.step()
        return float(loss.detach())

    def _unrolled_grads(self, x_val, y_val, x_train, y_train, xi: float, weight_decay: float):
        """Gradient of L_val(w - xi * dL_train/dw, alpha) w.r.t. alpha, with a finite-difference Hessian."""
        weights = [p for p in self.supernet.weight_parameters() if p.requires_grad]
        originals = [w.detach().clone() for w in weights]
        train_grads = torch.autograd.grad(self._loss(x_train, y_train), weights, allow_unused=True)
        with torch.no_grad():  # w' = w - xi * (grad + wd * w): one virtual SGD step (momentum left out)
            for w, g in zip(weights, train_grads):
                if g is not None:
                    w.sub_(xi * (g + weight_decay * w))
        val_loss = self._loss(x_val, y_val)
        grads = torch.autograd.grad(val_loss, self.params + weights, allow_unused=True)
        arch_grads, dw = list(grads[: len(self.params)]), grads[len(self.params):]
        norm = torch.sqrt(sum((g ** 2).sum() for g in dw if g is not None))
        eps = 0.01 / (float(norm) + 1e-12)
        hessian_terms = []
        for sign in (1.0, -1.0):  # grad_alpha L_train(w +- eps * dw')
            with torch.no_grad():
                for w, w0, g in zip(weights, originals, dw):
                    w.copy_(w0 if g is None else w0 + sign * eps * g)
            hessian_terms.append(torch.autograd.grad(self._loss(x_train, y_train), self.params,
                                                     allow_unused=True))
        with torch.no_grad():
            for w, w0 in zip(weights, originals):
                w.copy_(w0)
        for i, (plus, minus) in enumerate(zip(*hessian_terms)):
            if arch_grads[i] is not None and plus is not None and minus is not None:
                arch_grads[i] = arch_grads[i] - xi * (plus - minus) / (2 * eps)
        return val_loss.detach(), arch_grads

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
