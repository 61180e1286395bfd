"""Bilevel one-shot search over the activation cell (DARTS, GDAS, DrNAS share this loop).

Per iteration: the relaxation draws its sample (GDAS: one Gumbel sample reused by both steps); the architect
updates alphas on a validation batch; then the network weights take an SGD step on a training batch, with the
alphas frozen. A step whose loss or gradients are not finite is skipped and counted, never applied, and the
BatchNorm statistics its forward pass moved are put back (`pipeline.search.skips`); above a fraction of skipped
steps (`MAX_SKIPPED_FRACTION`) the search fails with `SearchDiverged`. Every epoch
records losses, top-1/top-5, operator weights and their entropy, the argmax genotype and its formula, the betas
and the temperature; a checkpoint after every epoch lets a killed search resume exactly where it stopped. The
checkpoint belongs to the settings, the steps per epoch and `checkpoint_inputs` (the stage's hashed data and code):
one left by a run that differs in any of them is refused (CheckpointError), never resumed.

The GRAFS procedure (Strack et al. 2024), each part optional:
- ReLU warm start (`warmstart_epochs`): the weight steps of the first epochs run every site as plain ReLU, while
  the architecture step already trains the alphas on the mixed cell. The arch loss reaches the alphas (and betas)
  only: `Architect` takes gradients of exactly those (GRAFS's own code lets them leak into the weights).
- Progressive shrinking (`start_shrinking`, `pipeline.search.shrink`): before an epoch, operators are dropped on a
  log-spaced schedule until one per edge remains. The mask is in the supernet's state, hence in the checkpoint.
  Compiled, every candidate set runs the one kernel of the full set, the mask being its runtime input
  (`pipeline.search.fused_site`): shrinking never recompiles.
- Every epoch also measures the discretized network (the argmax genotype with the supernet's weights) after
  BatchNorm recalibration on `bn_recalibration_batches` training batches: `discretized_val_top1` beside the
  supernet's `val_top1`, so that a collapse shows. `select: best` takes the supernet of the epoch whose
  discretized network scored best (`last`: the last epoch); `selection` then picks the genotype from it (argmax,
  or perturbation-based, `pipeline.search.select`).
"""
from __future__ import annotations

import copy
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
from pipeline.search.evaluation import evaluate_discretized, evaluate_supernet, selection_score
from pipeline.search.select import SELECTIONS, select_genotype
from pipeline.search.shrink import drops_per_epoch, remaining_fraction
from pipeline.search.skips import MAX_SKIPPED_FRACTION, BatchNormGuard, check_skipped
from pipeline.training.checkpoint import CheckpointError, config_fingerprint, load_checkpoint, save_checkpoint
from pipeline.training.device import autocast_context, resolve_device, rng_state, seed_everything, set_rng_state
from pipeline.space.genotype import Genotype
from pipeline.training.metrics import MetricAccumulator
from pipeline.search.relax import entropy, make_relaxation
from pipeline.search.search_config import SearchConfig

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    genotype: Genotype  # selected by cfg.select (which epoch) and cfg.selection (argmax or perturbation)
    history: list[dict]
    skipped_steps: int
    supernet: Supernet = field(repr=False)  # as it was at the selected epoch
    selected_epoch: int = 0  # 1-based, as in the records
    perturbation_scores: dict = field(default_factory=dict)  # selection "perturbation": per edge and operator
    steps: int = 0  # weight and architecture steps taken, skipped ones included


def build_supernet(cfg: SearchConfig) -> Supernet:
    relaxation = make_relaxation(cfg.optimizer, tau_max=cfg.gdas.tau_max, tau_min=cfg.gdas.tau_min, seed=cfg.seed,
                                 drnas_regularizer=cfg.drnas.regularizer, drnas_reg_scale=cfg.drnas.reg_scale)
    return Supernet(cfg.network, cfg.space, cfg.op_set, relaxation, cfg.beta_mode, cfg.drnas.per_site_sample,
                    beta_init=cfg.beta_init, beta_clamp=cfg.beta_clamp)


def _epoch_record(supernet: Supernet, epoch: int) -> dict:
    weights = supernet.operator_weights()
    genotype = supernet.genotype()
    masks = {edge: supernet.cell.mask(edge) for edge in weights}
    return {
        "epoch": epoch,
        "temperature": supernet.relaxation.temperature,
        "operator_weights": weights,
        "entropy": {edge: entropy(torch.tensor(list(w.values()))) for edge, w in weights.items()},
        "genotype": genotype.to_dict(),
        "formula": genotype.formula(),
        "betas": supernet.learned_betas(),
        "mask": {edge: dict(zip(w, masks[edge].tolist())) for edge, w in weights.items()},
        "remaining": {edge: len(supernet.cell.active(edge)) for edge in weights},
        "remaining_fraction": remaining_fraction(masks),
    }


def run_search(cfg: SearchConfig, train_loader, val_loader, *, checkpoint_path: Optional[Path] = None,
               on_epoch: Optional[Callable[[dict], None]] = None, progress: bool = False,
               max_skipped_fraction: float = MAX_SKIPPED_FRACTION,
               checkpoint_inputs: Optional[dict] = None) -> SearchResult:
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
    cell = supernet.cell
    drops = drops_per_epoch(cfg.epochs, cfg.start_shrinking, sum(len(n) for n in cell.candidates.values()),
                            len(cell.candidates))
    history: list[dict] = []
    skipped, steps, start_epoch = 0, 0, 0
    best: dict = {"epoch": 0, "top1": -math.inf, "state": None}  # the epoch `select: best` will take
    # What a checkpoint must share with this run to be resumed (the device may differ: same trajectory).
    belongs = {"fingerprint": config_fingerprint(cfg.model_dump(mode="json", exclude={"device"})),
               "steps_per_epoch": len(train_loader), "inputs": dict(checkpoint_inputs or {})}
    state = load_checkpoint(checkpoint_path, belongs) if checkpoint_path else None
    if state is not None:
        supernet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        architect.load_state_dict(state["architect"])
        supernet.relaxation.load_state_dict(state["relaxation"])
        history, skipped, start_epoch, best = state["history"], state["skipped_steps"], state["epoch"], state["best"]
        steps = state["steps"]
        set_rng_state(state["rng"])
        log.warning("resuming search from epoch %d (checkpoint %s)", start_epoch, checkpoint_path)

    batchnorm = BatchNormGuard(supernet)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        dropped = cell.drop(drops[epoch])
        supernet.relaxation.set_progress(epoch, cfg.epochs)
        train_loader.set_epoch(epoch)
        val_loader.set_epoch(epoch)
        search_arch = epoch >= cfg.warmup_epochs
        warm = epoch < cfg.warmstart_epochs
        lr = optimizer.param_groups[0]["lr"]
        train_acc, arch_losses = MetricAccumulator(), []
        supernet.train()
        for (x, y), (xv, yv) in zip(train_loader, _cycle(val_loader)):
            supernet.relaxation.resample(cell.alpha_dict())
            if search_arch:  # always on the mixed cell, warm start or not
                batchnorm.save()
                arch_loss = architect.step(xv, yv, x, y, weight_lr=lr, weight_decay=cfg.weight_decay)
                steps += 1
                if arch_loss is None:
                    batchnorm.restore()
                    skipped += 1
                else:
                    arch_losses.append(arch_loss)
            cell.warm_relu = warm
            try:
                batchnorm.save()
                steps += 1
                if not _weight_step(supernet, optimizer, x, y, cfg, device, train_acc):
                    batchnorm.restore()
                    skipped += 1
            finally:
                cell.warm_relu = False
        check_skipped(skipped, steps, epoch + 1, max_skipped_fraction)
        scheduler.step()
        # The epoch's own overhead beside its iterations, timed part by part (docs/benchmarks.md's table).
        phases = {"iterations_s": time.perf_counter() - started}
        val = evaluate_supernet(supernet, val_loader, device, cfg.amp)
        record = _epoch_record(supernet, epoch + 1)
        phases["val_eval_s"] = time.perf_counter() - started - sum(phases.values())
        discrete = evaluate_discretized(supernet, Genotype.from_dict(record["genotype"]), train_loader, val_loader,
                                        device, cfg.bn_recalibration_batches, cfg.amp)
        phases["discretized_eval_s"] = time.perf_counter() - started - sum(phases.values())
        train = train_acc.result()
        record |= {"lr": lr, "skipped_steps": skipped, "steps": steps, "warm_start": warm,
                   "dropped": [f"{e}.{n}" for e, n in dropped],
                   "train_loss": train["loss"], "train_top1": train["top1"], "train_top5": train["top5"],
                   "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                   "discretized_val_loss": discrete["loss"], "discretized_val_top1": discrete["top1"],
                   "discretized_val_top5": discrete["top5"],
                   "arch_loss": sum(arch_losses) / len(arch_losses) if arch_losses else math.nan,
                   **phases, "checkpoint_s": math.nan, "logging_s": math.nan, "epoch_time_s": math.nan}
        history.append(record)
        if cfg.select == "best" and discrete["top1"] > best["top1"]:
            best = {"epoch": epoch + 1, "top1": discrete["top1"], "state": copy.deepcopy(supernet.state_dict())}
        if progress:
            log.info("search epoch %d/%d: val top-1 %.2f (discretized %.2f), %s", epoch + 1, cfg.epochs,
                     val["top1"], discrete["top1"], record["formula"])
        if checkpoint_path:
            save_checkpoint(checkpoint_path, {
                **belongs, "epoch": epoch + 1, "model": supernet.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "architect": architect.state_dict(), "relaxation": supernet.relaxation.state_dict(),
                "history": history, "skipped_steps": skipped, "steps": steps, "best": best, "rng": rng_state()})
        logging_ = time.perf_counter()
        # The rest: the copy `select: best` keeps of the epoch's state, and the checkpoint.
        record["checkpoint_s"] = logging_ - started - sum(phases.values())
        record["epoch_time_s"] = logging_ - started  # all but the logging, which reads it
        if on_epoch:
            on_epoch(record)
        record["logging_s"] = time.perf_counter() - logging_  # NaN in the checkpoint, written before
    selected_epoch = cfg.epochs
    if cfg.select == "best" and best["state"] is not None:
        supernet.load_state_dict(best["state"])
        selected_epoch = best["epoch"]
    genotype, scores = select_genotype(supernet, cfg.selection, lambda net: selection_score(net, val_loader, device,
                                                                                              cfg.seed, cfg.amp))
    return SearchResult(genotype, history, skipped, supernet, selected_epoch, scores, steps)


# Per epoch record: wall times of its parts, which differ between equal runs (tests compare records without them).
TIMING_KEYS = ("iterations_s", "val_eval_s", "discretized_eval_s", "checkpoint_s", "logging_s", "epoch_time_s")


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
def save_supernet(supernet: Supernet, cfg: SearchConfig, path: Path, genotype: Optional[Genotype] = None) -> None:
    """The supernet (its state includes the shrinking masks) and, if given, the genotype the search selected."""
    config = cfg.model_dump(mode="json")
    torch.save({"config": config, "state_dict": supernet.state_dict(),
                "genotype": None if genotype is None else genotype.to_dict()}, path)


def load_selected_genotype(path: Path) -> Optional[Genotype]:
    """The genotype `save_supernet` stored beside the supernet (None if it stored none); a broken one is a
    CheckpointError (one line for the user: rerun the search), not a traceback."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return None if saved.get("genotype") is None else Genotype.from_dict(saved["genotype"])
    except ValueError as err:
        raise CheckpointError(f"the genotype stored in the searched supernet {path} is broken ({err}); delete it and "
                              f"rerun the search stage") from None


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
