"""Bilevel one-shot search over the activation cell (DARTS, GDAS, DrNAS share this loop).

Per iteration: the relaxation draws its sample (GDAS: one Gumbel sample reused by both steps); the architect
updates alphas on a validation batch; then the network weights take an SGD step on a training batch, with the
alphas frozen. A step whose loss or gradients are not finite is skipped and counted, never applied. Every epoch
records losses, top-1/top-5, operator weights and their entropy, the argmax genotype and its formula, the betas
and the temperature; a checkpoint after every epoch lets a killed search resume exactly where it stopped.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from pipeline.search.architect import Architect
from pipeline.search.cell import Supernet
from pipeline.training.checkpoint import CheckpointError, config_fingerprint, load_checkpoint, save_checkpoint
from pipeline.training.device import autocast_context, resolve_device, rng_state, seed_everything, set_rng_state
from pipeline.space.genotype import Genotype
from pipeline.training.metrics import MetricAccumulator
from pipeline.search.relax import entropy, make_relaxation
from pipeline.search.search_config import SearchConfig

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    genotype: Genotype
    history: list[dict]
    skipped_steps: int
    supernet: Supernet = field(repr=False)


def build_supernet(cfg: SearchConfig) -> Supernet:
    relaxation = make_relaxation(cfg.optimizer, tau_max=cfg.gdas.tau_max, tau_min=cfg.gdas.tau_min, seed=cfg.seed,
                                 drnas_regularizer=cfg.drnas.regularizer, drnas_reg_scale=cfg.drnas.reg_scale)
    return Supernet(cfg.network, cfg.space, cfg.op_set, relaxation, cfg.beta_mode, cfg.drnas.per_site_sample,
                    beta_init=cfg.beta_init, beta_clamp=cfg.beta_clamp)


def evaluate_supernet(model: torch.nn.Module, loader, device, amp: bool = False) -> dict:
    """Loss/top-1/top-5 of the supernet as trained (GDAS and DrNAS draw a sample per batch)."""
    model.eval()
    acc = MetricAccumulator()
    with torch.no_grad():
        for x, y in loader:
            if isinstance(model, Supernet):
                model.relaxation.resample(model.cell.alpha_dict())
            with autocast_context(device, amp):
                logits = model(x)
            acc.update(F.cross_entropy(logits.float(), y), logits, y)
    return acc.result()


def _epoch_record(supernet: Supernet, epoch: int) -> dict:
    weights = supernet.operator_weights()
    genotype = supernet.genotype()
    return {
        "epoch": epoch,
        "temperature": supernet.relaxation.temperature,
        "operator_weights": weights,
        "entropy": {edge: entropy(torch.tensor(list(w.values()))) for edge, w in weights.items()},
        "genotype": genotype.to_dict(),
        "formula": genotype.formula(),
        "betas": supernet.learned_betas(),
    }


def run_search(cfg: SearchConfig, train_loader, val_loader, *, checkpoint_path: Optional[Path] = None,
               on_epoch: Optional[Callable[[dict], None]] = None, progress: bool = False) -> SearchResult:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, deterministic=device.type == "cpu")
    supernet = build_supernet(cfg).to(device)
    weight_params = supernet.weight_parameters() + (supernet.beta_parameters() if cfg.betas_with == "weights"
                                                    else [])
    optimizer = torch.optim.SGD(weight_params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs, eta_min=cfg.lr_min)
    architect = Architect(supernet, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
                          train_betas=cfg.betas_with == "arch", second_order=cfg.darts.second_order,
                          autocast=lambda: autocast_context(device, cfg.amp))
    history: list[dict] = []
    skipped, start_epoch = 0, 0
    fingerprint = config_fingerprint(cfg.model_dump(mode="json", exclude={"device"}))
    state = load_checkpoint(checkpoint_path, {"fingerprint": fingerprint}) if checkpoint_path else None
    if state is not None:
        supernet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        architect.load_state_dict(state["architect"])
        supernet.relaxation.load_state_dict(state["relaxation"])
        history, skipped, start_epoch = state["history"], state["skipped_steps"], state["epoch"]
        set_rng_state(state["rng"])
        log.warning("resuming search from epoch %d (checkpoint %s)", start_epoch, checkpoint_path)

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        supernet.relaxation.set_progress(epoch, cfg.epochs)
        train_loader.set_epoch(epoch)
        val_loader.set_epoch(epoch)
        search_arch = epoch >= cfg.warmup_epochs
        lr = optimizer.param_groups[0]["lr"]
        train_acc, arch_losses = MetricAccumulator(), []
        supernet.train()
        for (x, y), (xv, yv) in zip(train_loader, _cycle(val_loader)):
            supernet.relaxation.resample(supernet.cell.alpha_dict())
            if search_arch:
                arch_loss = architect.step(xv, yv, x, y, weight_lr=lr, weight_decay=cfg.weight_decay)
                if arch_loss is None:
                    skipped += 1
                else:
                    arch_losses.append(arch_loss)
            skipped += not _weight_step(supernet, optimizer, x, y, cfg, device, train_acc)
        scheduler.step()
        val = evaluate_supernet(supernet, val_loader, device, cfg.amp)
        train = train_acc.result()
        record = {**_epoch_record(supernet, epoch + 1), "lr": lr, "skipped_steps": skipped,
                  "train_loss": train["loss"], "train_top1": train["top1"], "train_top5": train["top5"],
                  "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                  "arch_loss": sum(arch_losses) / len(arch_losses) if arch_losses else math.nan,
                  "epoch_time_s": time.perf_counter() - started}
        history.append(record)
        if progress:
            log.info("search epoch %d/%d: val top-1 %.2f, %s", epoch + 1, cfg.epochs, val["top1"],
                     record["formula"])
        if checkpoint_path:
            save_checkpoint(checkpoint_path, {
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": supernet.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "architect": architect.state_dict(), "relaxation": supernet.relaxation.state_dict(),
                "history": history, "skipped_steps": skipped, "rng": rng_state()})
        if on_epoch:
            on_epoch(record)
    return SearchResult(supernet.genotype(), history, skipped, supernet)


def _cycle(loader):
    """The validation loader, restarted when exhausted (the splits may differ in size)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the validation split is empty; give the search a validation set")


def _weight_step(supernet: Supernet, optimizer, x, y, cfg: SearchConfig, device, acc: MetricAccumulator) -> bool:
    """One SGD step of the network weights with the alphas frozen; False (and nothing applied) if not finite."""
    arch = supernet.arch_parameters()
    for p in arch:
        p.requires_grad_(False)
    try:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, cfg.amp):
            logits = supernet(x)
        loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            return False
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                              cfg.grad_clip)
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return False
        optimizer.step()
        acc.update(loss, logits, y)
        return True
    finally:
        for p in arch:
            p.requires_grad_(True)


# --- the search's output: the trained supernet, read back by the discretize stage ----------------------------
def save_supernet(supernet: Supernet, cfg: SearchConfig, path: Path) -> None:
    torch.save({"config": cfg.model_dump(mode="json"), "state_dict": supernet.state_dict()}, path)


def load_supernet(path: Path, device: torch.device | str = "cpu") -> tuple[Supernet, SearchConfig]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cfg = SearchConfig.model_validate(saved["config"])
        supernet = build_supernet(cfg)
        supernet.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise CheckpointError(f"no searched supernet at {path}: run the search stage first (dvc repro)") from None
    except Exception as err:
        raise CheckpointError(f"cannot load the searched supernet {path} ({type(err).__name__}: {err}); "
                              "delete it and rerun the search stage") from err
    return supernet.to(device), cfg
