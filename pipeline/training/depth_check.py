"""The depth check: does an activation function carry signal through a deep CIFAR ResNet at initialisation?

A function can look fine on the search's shallow supernet and still explode on ResNet-56: in these ResNets the
activation sits on the residual stream after every addition, so a derivative that is large where BatchNorm puts
its inputs (a steep sqrt, x^3, exp) multiplies the backward signal once per block. The check measures, for each
network, freshly initialised as the evaluate stage builds it (same factory, same betas):

- forward: the second moment E[h^2] of every block's output h on one batch of real images (train mode, as in
  training: BatchNorm uses the batch's statistics);
- backward: the gradient norm at every block's output, per image: sqrt(mean_i |dL_i/dh_i|^2) with L_i the
  image's cross-entropy (the gradient of the summed loss, divided by sqrt(batch)), so it does not depend on the
  batch size. The backward signal grows towards the input: `grad_growth` = first block / last block, and
  `grad_spread` = largest / smallest over the blocks, which is the growth when the gradient grows steadily (ReLU,
  Swish, GELU) and also sees a gradient that collapses in the middle of the network (exp on ResNet-56: growth
  x3.7, spread x275);
- a short SGD run: `sgd_steps` steps at the retraining learning rate (constant, no warmup: the worst case the
  schedule reaches), with the retraining's momentum, weight decay and clipping; the loss and the global gradient
  norm per step, and whether it diverged (a loss above the retraining's divergence_loss or not finite).

A function is flagged when its gradient spread exceeds `max_grad_spread` on any network, or when a short SGD
run diverges. The default threshold comes from measurements of ReLU, Swish and GELU
(docs/depth_check.md), not from the functions it should catch. The evaluate stage still retrains a flagged
function (it is measured, never skipped); the flag says where to look before the retraining is spent.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from pipeline.space.models import DEPTHS, ActivationFactory, build_resnet
from pipeline.training.train import parameter_groups
from pipeline.training.train_config import SETTINGS, TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]
LOSS_TAIL = 5  # the SGD run's final loss is the mean over its last steps (one batch's loss is noisy)


class DepthCheckSettings(BaseModel):
    """params.yaml `discretize.depth_check`."""
    model_config = SETTINGS
    extra_networks: list[Literal[tuple(DEPTHS)]] = Field(
        description="networks checked besides evaluate.networks (a deep one shows what depth does: resnet56)")
    batch_size: int = Field(ge=2, description="real training images of the forward/backward measurement at "
                                              "initialisation (BatchNorm needs more than one)")
    sgd_steps: int = Field(ge=0, description="SGD steps at evaluate.lr (batch evaluate.batch_size) after the "
                                             "measurement; 0: no SGD run")
    max_grad_spread: float = Field(gt=1, allow_inf_nan=False, description=(
        "flag a function whose per-block gradient norms differ by more than this factor (largest / smallest "
        "block, at initialisation) on any checked network; docs/depth_check.md: ReLU, Swish and GELU reach "
        "x12-x18 on resnet56"))


def block_profile(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """One forward and backward pass in train mode: per block of `model.layers`, the second moment of its output
    (`second_moments`) and the per-image gradient norm there (`grad_norms`, see the module docstring); `loss`."""
    outputs: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        outputs.append(output)

    hooks = [block.register_forward_hook(keep) for block in model.layers]
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        logits = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    summed = F.cross_entropy(logits.float(), labels, reduction="sum")
    summed.backward()
    model.zero_grad(set_to_none=True)  # the weights' gradients are not the measurement
    batch = len(images)
    return {"loss": summed.item() / batch,
            "second_moments": [h.detach().float().pow(2).mean().item() for h in outputs],
            "grad_norms": [(h.grad.float().norm() / math.sqrt(batch)).item() for h in outputs]}


def sgd_run(model: nn.Module, batches: Iterator[Batch], recipe: TrainConfig, steps: int) -> dict:
    """`steps` SGD steps at the recipe's lr (constant), momentum, Nesterov, weight decay (not on betas, as in
    retraining) and gradient clipping. Per step the loss and the global gradient norm before clipping; it stops
    at the first loss or gradient norm that is not finite or a loss above recipe.divergence_loss."""
    optimizer = torch.optim.SGD(parameter_groups(model, recipe.weight_decay), lr=recipe.lr,
                                momentum=recipe.momentum, nesterov=recipe.nesterov)
    parameters = [p for p in model.parameters() if p.requires_grad]
    model.train()
    losses, grad_norms, diverged_step = [], [], None
    for step in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(parameters, recipe.grad_clip if recipe.grad_clip is not None else math.inf)
        losses.append(loss.item())
        grad_norms.append(norm.item())
        if not (math.isfinite(losses[-1]) and math.isfinite(grad_norms[-1])) or losses[-1] > recipe.divergence_loss:
            diverged_step = step + 1
            break
        optimizer.step()
    tail = losses[-LOSS_TAIL:]
    return {"losses": losses, "grad_norms": grad_norms, "diverged": diverged_step is not None,
            "diverged_step": diverged_step, "initial_loss": losses[0] if losses else math.nan,
            "final_loss": sum(tail) / len(tail) if tail else math.nan,
            # inf once a gradient overflowed (max() over a list with NaN depends on the order)
            "max_grad_norm": max(grad_norms, default=math.nan) if all(map(math.isfinite, grad_norms)) else math.inf,
            "final_grad_norm": grad_norms[-1] if grad_norms else math.nan}


def _ratio(numerator: float, denominator: float) -> float:
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return math.nan
    return numerator / denominator


def _spread(values: list[float]) -> float:
    """Largest / smallest; NaN if any value is not finite (the gradient overflowed somewhere)."""
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return _ratio(max(values), min(values))


def check_network(network: str, factory: ActivationFactory, images: torch.Tensor, labels: torch.Tensor,
                  batches: Callable[[], Iterator[Batch]], recipe: TrainConfig, steps: int,
                  seed_init: Callable[[], None]) -> dict:
    """The measurement on one network, initialised after `seed_init()` (the same weights for every function);
    its SGD run draws from a fresh `batches()` (the same batches for every network and function)."""
    seed_init()
    model = build_resnet(network, factory).to(images.device)
    profile = block_profile(model, images, labels)
    moments, norms = profile["second_moments"], profile["grad_norms"]
    result = {"network": network, "blocks": len(moments), "init_loss": profile["loss"],
              "grad_growth": _ratio(norms[0], norms[-1]), "grad_spread": _spread(norms),
              "forward_growth": _ratio(moments[-1], moments[0]),
              "second_moments": moments, "grad_norms": norms}
    if steps:
        result["sgd"] = sgd_run(model, batches(), recipe, steps)
    return result


def verdict(networks: list[dict], max_grad_spread: float) -> dict:
    """Flag and one-line summary from the per-network results: `summary` reads "ok (x12 grad spread on resnet56)"
    (the largest spread) or "flagged (x1.4e+04 grad spread on resnet56; SGD diverged on resnet56 at step 6)"."""
    reasons = []
    for result in networks:
        spread, name = result["grad_spread"], result["network"]
        if not math.isfinite(spread):
            reasons.append(f"non-finite gradients on {name}")
        elif spread > max_grad_spread:
            reasons.append(f"x{spread:.3g} grad spread on {name}")
        sgd = result.get("sgd")
        if sgd and sgd["diverged"]:
            reasons.append(f"SGD diverged on {name} at step {sgd['diverged_step']}")
    finite = [r for r in networks if math.isfinite(r["grad_spread"])]
    worst = max(finite, key=lambda r: r["grad_spread"]) if finite else None
    if reasons:
        summary = f"flagged ({'; '.join(reasons)})"
    else:
        summary = f"ok (x{worst['grad_spread']:.3g} grad spread on {worst['network']})"
    return {"flagged": bool(reasons), "reasons": reasons, "summary": summary, "max_grad_spread": max_grad_spread,
            "worst_grad_spread": worst["grad_spread"] if worst else math.nan,
            "worst_network": worst["network"] if worst else None}


def depth_check(factory: ActivationFactory, networks: list[str], images: torch.Tensor, labels: torch.Tensor,
                batches: Callable[[], Iterator[Batch]], recipe: TrainConfig, settings: DepthCheckSettings,
                seed_init: Callable[[], None]) -> dict:
    """The check on every network (shallow to deep): {"networks": {name: result}, flagged, reasons, summary,
    max_grad_spread, worst_grad_spread, worst_network}. `images`/`labels`: one batch of real images on the
    device; `batches()`: a fresh iterator of training batches for each network's SGD run, which starts from
    that network's initial weights."""
    unknown = [n for n in networks if n not in DEPTHS]
    if not networks or unknown:
        raise ValueError(f"unknown network(s) {unknown}; choose from {sorted(DEPTHS)}")
    ordered = sorted(dict.fromkeys(networks), key=DEPTHS.__getitem__)
    results = [check_network(n, factory, images, labels, batches, recipe, settings.sgd_steps, seed_init)
               for n in ordered]
    return {"networks": {r["network"]: r for r in results}} | verdict(results, settings.max_grad_spread)


def mlflow_metrics(check: dict) -> dict[str, float]:
    """A few numbers per network for the discretize run: depth.<network>.grad_spread, grad_growth,
    forward_growth and, with an SGD run, sgd_final_loss and sgd_max_grad_norm; and depth.flagged (0/1)."""
    metrics = {"depth.flagged": float(check["flagged"])}
    for name, result in check["networks"].items():
        metrics[f"depth.{name}.grad_spread"] = result["grad_spread"]
        metrics[f"depth.{name}.grad_growth"] = result["grad_growth"]
        metrics[f"depth.{name}.forward_growth"] = result["forward_growth"]
        if "sgd" in result:
            metrics[f"depth.{name}.sgd_final_loss"] = result["sgd"]["final_loss"]
            metrics[f"depth.{name}.sgd_max_grad_norm"] = result["sgd"]["max_grad_norm"]
    return {key: value for key, value in metrics.items() if math.isfinite(value)}
