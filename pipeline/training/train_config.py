"""What a training run is: its validated settings (`TrainConfig`) and its learning-rate schedule.

- The learning rate is set before every iteration from a pure function of the global step
  (`learning_rate`), so the schedule has no state to save: resuming after N epochs continues at step
  N * steps_per_epoch. Milestones and warmup are given in epochs; warmup is linear from lr/warmup_steps
  (onecycle: its rise is half a cosine from lr/25).
- `trajectory_config` names the fields a checkpoint must match to be resumed. The loop is `pipeline.training.train`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

SCHEDULES = ("cosine", "multistep", "constant", "onecycle")
ONECYCLE_START_DIVISOR = 25.0  # onecycle starts at lr / 25, as torch.optim.lr_scheduler.OneCycleLR does
# Fields that do not change the weights' trajectory, so a resumed run may change them.
_OUTSIDE_FINGERPRINT = ("device", "divergence_loss", "chance_margin")


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    amp: bool = False  # bf16 autocast, effective on CUDA only
    grad_clip: float | None = None  # max global gradient L2 norm
    device: str = "auto"
    seed: int = 0
    divergence_loss: float = 1e3  # a running epoch loss above this (or non-finite) = diverged
    chance_margin: float = 5.0  # final top-1 <= chance + this many points = failed to learn
    eval_every: int = 1  # evaluate the test set after every N-th epoch and always after the last
    deterministic: bool = True  # CPU: torch's deterministic algorithms (bit-exact resume), ~10% of a step

    def _fail(self, name: str, allowed: str) -> None:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

    def _check_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._fail(name, f"expected an int >= {minimum}")

    def _check_real(self, name: str, ok: Callable[[float], bool], allowed: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
            self._fail(name, f"expected {allowed}")
        setattr(self, name, float(value))

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0), ("seed", 0)):
            self._check_int(name, minimum)
        self._check_real("lr", lambda v: 0 <= v < math.inf, "a finite number >= 0")
        self._check_real("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
        self._check_real("weight_decay", lambda v: 0 <= v < math.inf, "a finite number >= 0")
        self._check_real("gamma", lambda v: 0 < v <= 1, "a number in (0, 1]")
        self._check_real("label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)")
        self._check_real("divergence_loss", lambda v: v > 0, "a number > 0 (math.inf disables the check)")
        self._check_real("chance_margin", lambda v: 0 <= v < 100, "percentage points in [0, 100)")
        if self.grad_clip is not None:
            self._check_real("grad_clip", lambda v: 0 < v < math.inf, "None or a finite number > 0")
        for name in ("nesterov", "amp"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "expected True or False")
        if self.nesterov and self.momentum == 0:
            self._fail("nesterov", "Nesterov momentum needs momentum > 0")
        if self.schedule not in SCHEDULES:
            self._fail("schedule", f"expected one of {list(SCHEDULES)}")
        milestones = self.milestones
        if not isinstance(milestones, (list, tuple)) or any(
                isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones) \
                or list(milestones) != sorted(set(milestones)):
            self._fail("milestones", "expected a strictly increasing list of epoch numbers >= 1")
        self.milestones = list(milestones)
        if self.schedule == "multistep" and not self.milestones:
            self._fail("milestones", "schedule 'multistep' needs at least one milestone epoch")
        if self.schedule != "multistep" and self.milestones:
            self._fail("milestones", f"milestones only apply to schedule 'multistep', not {self.schedule!r}")
        if self.warmup_epochs > self.epochs:
            self._fail("warmup_epochs", f"must not exceed epochs ({self.epochs})")
        if not isinstance(self.device, str) or not self.device.strip():
            self._fail("device", "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def trajectory_config(cfg: TrainConfig) -> dict:
    """The config fields that determine the weights; a checkpoint only resumes a run with equal ones.

    `epochs` only shapes the cosine and onecycle schedules; with the others a finished run may be extended.
    """
    values = dataclasses.asdict(cfg)
    for name in _OUTSIDE_FINGERPRINT:
        values.pop(name)
    if cfg.schedule not in ("cosine", "onecycle"):
        values.pop("epochs")
    return values


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for global iteration `step` (0-based)."""
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return _one_cycle(cfg, step, warmup_steps, cfg.epochs * steps_per_epoch)
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        drops = sum(step >= milestone * steps_per_epoch for milestone in cfg.milestones)
        return cfg.lr * cfg.gamma ** drops
    progress = (step - warmup_steps) / max(1, cfg.epochs * steps_per_epoch - warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))



def _one_cycle(cfg: TrainConfig, step: int, rise_steps: int, total_steps: int) -> float:
    """Half a cosine up from lr / 25 to lr over the warmup epochs (one step at least), then half a cosine down towards 0
    (as cosine does): the shape of torch's OneCycleLR (without its momentum cycling), with the rise in epochs."""
    rise_steps = max(1, rise_steps)
    if step < rise_steps:
        start = cfg.lr / ONECYCLE_START_DIVISOR
        return start + (cfg.lr - start) * 0.5 * (1.0 - math.cos(math.pi * step / rise_steps))
    progress = min(1.0, (step - rise_steps) / max(1, total_steps - rise_steps))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
