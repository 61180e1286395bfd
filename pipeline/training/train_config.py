"""What a training run is: its validated settings (`TrainConfig`) and its learning-rate schedule.

- `TrainSettings` is the training recipe, the fields of params.yaml's `evaluate` section that shape a run; the
  study's `evaluate` section extends it (pipeline.study.config) and `TrainConfig` adds the device and the seed. A
  new training param is one line here. Models are pydantic: strict types (YAML's `true` is no number), bounds in
  `Field`, choices as `Literal`, unknown keys refused; cross-field rules raise `invalid(...)`, whose context names
  the field so that params.yaml errors can name the key.
- The learning rate is set before every iteration from a pure function of the global step
  (`learning_rate`), so the schedule has no state to save: resuming after N epochs continues at step
  N * steps_per_epoch. Milestones and warmup are given in epochs; warmup is linear from lr/warmup_steps
  (onecycle: its rise is half a cosine from lr/25).
- `trajectory_config` names the fields a checkpoint must match to be resumed. The loop is `pipeline.training.train`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Every settings model: strict types, no unknown keys. Shared by the search and study settings.
SETTINGS = ConfigDict(extra="forbid", strict=True)
Schedule = Literal["cosine", "multistep", "constant", "onecycle"]
SCHEDULES = get_args(Schedule)
ONECYCLE_START_DIVISOR = 25.0  # onecycle starts at lr / 25, as torch.optim.lr_scheduler.OneCycleLR does
# Fields that do not change the weights' trajectory, so a resumed run may change them.
_OUTSIDE_FINGERPRINT = ("device", "divergence_loss", "chance_margin")

PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Device = Annotated[str, Field(min_length=1, description="auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps")]


def invalid(field: str, value: Any, allowed: str) -> PydanticCustomError:
    """A cross-field error; `field` (a dotted path from the validated model) lets a caller name the key."""
    return PydanticCustomError("invalid_setting", "{field} = {value} is invalid; allowed: {allowed}",
                               {"field": field, "value": repr(value), "allowed": allowed})


class TrainSettings(BaseModel):
    """The training recipe (params.yaml `evaluate` section, less the study's own keys)."""
    model_config = SETTINGS

    epochs: int = Field(ge=1, description="training epochs")
    batch_size: int = Field(ge=2, description="training batch (BatchNorm needs more than one sample)")
    lr: float = Field(ge=0, allow_inf_nan=False, description="SGD with momentum; the schedule is per iteration")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(5e-4, ge=0, allow_inf_nan=False, description="SGD weight decay (activation betas are "
                                                                            "not decayed)")
    schedule: Schedule = Field("cosine", description="cosine | multistep: lr x gamma at each milestone | constant | "
                               "onecycle: half a cosine up from lr/25 over warmup_epochs, then cosine down (torch's "
                               "OneCycleLR without momentum cycling)")
    milestones: list[Annotated[int, Field(ge=1)]] = Field([], description="multistep only: epochs where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep only: the factor at each milestone")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from lr/warmup_steps over this many epochs "
                                                    "(onecycle: the rise)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy loss")
    grad_clip: Optional[PositiveFinite] = Field(None, description="max global gradient L2 norm; null: no clipping")
    amp: bool = Field(False, description="bf16 autocast, effective on CUDA only")
    divergence_loss: float = Field(1e3, gt=0, description="a running loss above this (or not finite) = diverged; "
                                                          "inf disables the check")
    chance_margin: float = Field(5.0, ge=0, lt=100, description="final top-1 <= 10% + this = failed_to_learn")
    eval_every: int = Field(1, ge=1, description="evaluate the test set after every N-th epoch and always after the "
                                                 "last (the result); the other epochs' records hold NaN test metrics")
    deterministic: bool = Field(True, description="CPU: torch's deterministic algorithms (bit-exact resume); "
                                                  "false: ~10% faster steps. CUDA runs are never deterministic")

    @model_validator(mode="after")
    def _consistent(self):
        if self.nesterov and self.momentum == 0:
            raise invalid("nesterov", self.nesterov, "false with momentum 0 (Nesterov momentum needs momentum > 0)")
        if self.milestones != sorted(set(self.milestones)):
            raise invalid("milestones", self.milestones, "a strictly increasing list of epoch numbers")
        if self.schedule == "multistep" and not self.milestones:
            raise invalid("milestones", self.milestones, "at least one epoch with schedule 'multistep'")
        if self.schedule != "multistep" and self.milestones:
            raise invalid("milestones", self.milestones, f"[] (milestones only apply to schedule 'multistep', "
                                                         f"not {self.schedule!r})")
        if self.warmup_epochs > self.epochs:
            raise invalid("warmup_epochs", self.warmup_epochs, f"at most epochs ({self.epochs})")
        return self


class TrainConfig(TrainSettings):
    """One training run: the recipe, where it runs and its seed."""
    device: Device = "auto"
    seed: int = Field(0, ge=0)


def trajectory_config(cfg: TrainConfig) -> dict:
    """The config fields that determine the weights; a checkpoint only resumes a run with equal ones.

    `epochs` only shapes the cosine and onecycle schedules; with the others a finished run may be extended.
    """
    values = cfg.model_dump(exclude=set(_OUTSIDE_FINGERPRINT))
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
