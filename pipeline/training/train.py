"""Train a fixed-activation network: SGD, per-iteration LR schedule, checkpoint/resume, divergence handling.

Choices (documented because results depend on them):
- Weight decay applies to every weight, BatchNorm scales and biases included (the He et al. 2016 CIFAR
  recipe), EXCEPT activation parameters: any parameter with a name component starting with `beta`
  (e.g. `layers.0.act1.beta`, a trainable Swish beta) gets weight_decay 0, so decay does not pull the
  activation's shape towards beta = 0.
- The learning rate follows `pipeline.training.train_config.learning_rate`, set before every iteration (no schedule
  state to save).
- The training loss (with label smoothing, the optimised objective) and top-k come from the training batches
  in train mode; the test loss is plain cross-entropy (no smoothing) in eval mode.
- The test set is evaluated after every `eval_every`-th epoch and after the last (the result); the records of the
  other epochs hold NaN test metrics. Evaluation runs in eval mode without gradients and draws no random numbers,
  so how often it runs does not change the weights.
- `train_loader.set_epoch(e)` is called with the 0-based epoch index e; records count epochs from 1.
- `on_epoch(record)` runs before the epoch's checkpoint is written: a kill in between re-runs and
  re-reports that epoch (at-least-once), rather than losing its report.
- Divergence is checked every iteration on CPU and every `DIVERGENCE_CHECK_EVERY` iterations elsewhere
  (each check waits for the accelerator).
- The global gradient norm (before clipping) is measured every step, kept on the device and read once per epoch:
  each record holds its mean and maximum, and `on_step(step, grad_norm)` (if given) sees every value. A function
  whose gradients explode shows it here before its loss does (docs/science.md).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from pipeline.training.checkpoint import CheckpointError, config_fingerprint, load_checkpoint, save_checkpoint
from pipeline.training.device import autocast_context, resolve_device, rng_state, seed_everything, set_rng_state
from pipeline.training.metrics import MetricAccumulator
from pipeline.training.train_config import TrainConfig, learning_rate, trajectory_config

logger = logging.getLogger(__name__)

DIVERGENCE_CHECK_EVERY = 20
NAN_METRICS = {"loss": math.nan, "top1": math.nan, "top5": math.nan}


def is_activation_parameter(name: str) -> bool:
    return any(part.startswith("beta") for part in name.split("."))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on all trainable parameters except activation parameters (see module docstring)."""
    decayed, activation = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (activation if is_activation_parameter(name) else decayed).append(parameter)
    if not decayed and not activation:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decayed, "weight_decay": weight_decay}] if decayed else []
    return groups + ([{"params": activation, "weight_decay": 0.0}] if activation else [])


def model_signature(model: nn.Module) -> str:
    tensors = [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]
    return config_fingerprint({"class": type(model).__name__, "tensors": tensors})


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged" | "failed_to_learn"
    history: list[dict]  # one record per epoch (see train_model)
    final: dict  # test {"loss", "top1", "top5"} after the last epoch; all NaN when diverged
    epoch_time_s: float  # mean over history
    diverged_epoch: int | None = None  # 1-based epoch in which training diverged
    resumed_from_epoch: int = 0  # epochs already done in the checkpoint this run started from


def _evaluate(model: nn.Module, loader, device: torch.device, amp: bool) -> MetricAccumulator:
    was_training = model.training
    model.eval()
    accumulator = MetricAccumulator()
    criterion = nn.CrossEntropyLoss()
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast_context(device, amp):
                    logits = model(x)
                logits = logits.float()
                accumulator.update(criterion(logits, y), logits, y)
    finally:
        model.train(was_training)
    return accumulator


def evaluate(model: nn.Module, loader, device: torch.device | str, amp: bool = False) -> dict:
    """Mean cross-entropy and top-1/top-5 (percent) of `model` over `loader`, in eval mode, no grad."""
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    return _evaluate(model, loader, device, amp).result()


def _diverged(accumulator: MetricAccumulator, cfg: TrainConfig) -> bool:
    loss = accumulator.mean_loss()
    return not math.isfinite(loss) or loss > cfg.divergence_loss


def _gradient_norm(parameters: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients, as clip_grad_norm_ computes it, without touching them."""
    return nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


def _train_epoch(model, loader, optimizer, criterion, cfg: TrainConfig, device: torch.device, epoch: int,
                 steps_per_epoch: int, show_progress: bool,
                 grad_norms: list[torch.Tensor]) -> tuple[MetricAccumulator, bool]:
    """One pass over `loader`; returns the running metrics and whether training diverged. Appends each step's
    gradient norm (a 0-d tensor on the device) to `grad_norms`."""
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    accumulator = MetricAccumulator()
    check_every = 1 if device.type == "cpu" else DIVERGENCE_CHECK_EVERY
    bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not show_progress, file=sys.stderr)
    try:
        for i, (x, y) in enumerate(bar):
            lr = learning_rate(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast_context(device, cfg.amp):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = _gradient_norm(parameters)
            grad_norms.append(norm)
            if cfg.grad_clip is not None:
                nn.utils.clip_grads_with_norm_(parameters, cfg.grad_clip, norm)
            optimizer.step()
            accumulator.update(loss, logits, y)
            if (i + 1) % check_every == 0:
                if _diverged(accumulator, cfg):
                    return accumulator, True
                if show_progress:
                    bar.set_postfix(loss=f"{accumulator.mean_loss():.3f}", lr=f"{lr:.3g}")
    finally:
        bar.close()
    return accumulator, _diverged(accumulator, cfg)


def _evaluates_after(epoch: int, cfg: TrainConfig) -> bool:
    """Whether the test set is evaluated after 0-based `epoch`: every cfg.eval_every-th epoch and the last."""
    return (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs


def _steps_per_epoch(train_loader, test_loader, cfg: TrainConfig) -> int:
    for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        try:
            batches = len(loader)
        except TypeError:
            raise ValueError(f"{name} must report its number of batches with len()") from None
        if batches == 0:
            raise ValueError(f"{name} yields no batches (dataset empty, or smaller than the batch size "
                             f"with drop_last=True); give it more samples or a smaller batch size")
    if not callable(getattr(train_loader, "set_epoch", None)):
        raise ValueError("train_loader needs set_epoch(epoch) so that each epoch's data order is reproducible "
                         "and a resumed run sees the same data; use pipeline.data.cifar.BatchLoader")
    loader_batch = getattr(train_loader, "batch_size", None)
    if loader_batch is not None and loader_batch != cfg.batch_size:
        raise ValueError(f"train_loader.batch_size={loader_batch} but TrainConfig.batch_size={cfg.batch_size}; "
                         f"build the loader with the configured batch size")
    return len(train_loader)


def _outcome(history: list[dict], num_classes: int | None, diverged_epoch: int | None,
             cfg: TrainConfig, resumed_from: int) -> TrainResult:
    times = [record["epoch_time_s"] for record in history]
    mean_time = sum(times) / len(times) if times else math.nan
    if diverged_epoch is not None:
        return TrainResult("diverged", history, dict(NAN_METRICS), mean_time, diverged_epoch, resumed_from)
    last = history[-1]
    final = {"loss": last["test_loss"], "top1": last["test_top1"], "top5": last["test_top5"]}
    chance = 100.0 / num_classes
    # "not >" so that NaN and below-chance accuracies (a collapsed network) also count as not learned.
    learned = final["top1"] > chance + cfg.chance_margin
    return TrainResult("ok" if learned else "failed_to_learn", history, final, mean_time, None, resumed_from)


def _norm_summary(norms: list[torch.Tensor]) -> tuple[dict, list[float]]:
    values = torch.stack(norms).double().cpu().tolist() if norms else []
    finite = [v for v in values if math.isfinite(v)]
    summary = {"grad_norm_mean": sum(finite) / len(finite) if finite else math.nan,
               "grad_norm_max": max(values) if values else math.nan}
    return summary, values


def train_model(model: nn.Module, train_loader, test_loader, cfg: TrainConfig, *,
                checkpoint_path=None, on_epoch: Callable[[dict], None] | None = None,
                progress: bool = True, checkpoint_meta: dict | None = None,
                on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train `model` (logits output) with SGD for cfg.epochs, resuming from `checkpoint_path` if it exists.

    Each epoch appends a record {epoch, lr, train_loss, train_top1, train_top5, grad_norm_mean, grad_norm_max,
    test_loss, test_top1, test_top5, epoch_time_s} (lr: at the epoch's first iteration; test_*: NaN where the epoch is not evaluated,
    see cfg.eval_every), calls `on_epoch(record)`, then saves a
    checkpoint. `checkpoint_meta` (JSON-able, e.g. network and activation names) must match on resume.
    Divergence never raises: it ends training with status "diverged". Every RNG is re-seeded with cfg.seed
    at the start (the model's initialisation is the caller's: seed before building it).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if isinstance(cfg.eval_every, bool) or not isinstance(cfg.eval_every, int) or cfg.eval_every < 1:
        raise ValueError(f"TrainConfig.eval_every={cfg.eval_every!r} is invalid: expected an int >= 1 "
                         f"(1: evaluate the test set after every epoch)")
    steps_per_epoch = _steps_per_epoch(train_loader, test_loader, cfg)
    device = resolve_device(cfg.device)
    expected = {"config": trajectory_config(cfg), "model_signature": model_signature(model),
                "steps_per_epoch": steps_per_epoch, "meta": dict(checkpoint_meta or {})}
    config_fingerprint(expected["meta"])  # fails early, with a clear message, if the meta is not JSON-able
    if not isinstance(cfg.deterministic, bool):
        raise ValueError(f"TrainConfig.deterministic={cfg.deterministic!r} is invalid: expected True or False")
    seed_everything(cfg.seed, deterministic=cfg.deterministic and device.type == "cpu")
    model.to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history: list[dict] = []
    epochs_done, num_classes, diverged_epoch = 0, None, None

    state = load_checkpoint(checkpoint_path, expected) if checkpoint_path is not None else None
    if state is not None:
        if state["epochs_done"] > cfg.epochs:
            raise CheckpointError(f"checkpoint {checkpoint_path} already holds {state['epochs_done']} epochs but "
                                  f"this run asks for {cfg.epochs}; raise epochs, or delete it to restart")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        history, epochs_done = list(state["history"]), state["epochs_done"]
        num_classes, diverged_epoch = state["num_classes"], state["diverged_epoch"]
        logger.info("resuming from epoch %d of %d (checkpoint %s)", epochs_done, cfg.epochs, checkpoint_path)
    resumed_from = epochs_done

    show_progress = progress and sys.stderr.isatty()
    epoch = epochs_done
    while diverged_epoch is None and epoch < cfg.epochs:
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        grad_norms: list[torch.Tensor] = []
        train, diverged = _train_epoch(model, train_loader, optimizer, criterion, cfg, device, epoch,
                                       steps_per_epoch, show_progress, grad_norms)
        norm_summary, norm_values = _norm_summary(grad_norms)
        if on_step is not None:
            for i, value in enumerate(norm_values):
                on_step(epoch * steps_per_epoch + i, value)
        if diverged:
            test, diverged_epoch = dict(NAN_METRICS), epoch + 1
            logger.warning("training diverged in epoch %d (running loss %s)", epoch + 1, train.mean_loss())
        elif not _evaluates_after(epoch, cfg):
            test = dict(NAN_METRICS)
        else:
            test_accumulator = _evaluate(model, test_loader, device, cfg.amp)
            test, num_classes = test_accumulator.result(), test_accumulator.num_classes
        train_metrics = train.result()
        record = {"epoch": epoch + 1, "lr": learning_rate(cfg, epoch * steps_per_epoch, steps_per_epoch),
                  **{f"train_{k}": v for k, v in train_metrics.items()}, **norm_summary,
                  **{f"test_{k}": v for k, v in test.items()},
                  "epoch_time_s": time.perf_counter() - started}
        history.append(record)
        logger.info("epoch %d/%d lr %.4g train loss %.4f top1 %.2f | test loss %.4f top1 %.2f top5 %.2f",
                    epoch + 1, cfg.epochs, record["lr"], record["train_loss"], record["train_top1"],
                    record["test_loss"], record["test_top1"], record["test_top5"])
        if on_epoch is not None:
            on_epoch(dict(record))
        epoch += 1
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                **expected, "epochs_done": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "history": history, "rng": rng_state(), "num_classes": num_classes,
                "diverged_epoch": diverged_epoch})
    return _outcome(history, num_classes, diverged_epoch, cfg, resumed_from)
