"""What a search is: its validated settings, the `search` section of params.yaml (pydantic models).

`SearchSettings` holds every key of that section that one search reads (a new search param is one line here);
the study's section (pipeline.study.config) adds the lists of optimizers and spaces it crosses, and
`SearchConfig` names the one optimizer and space of a search, and its device. Each optimizer's own settings are a
sub-model (`darts`, `gdas`, `drnas`), as in params.yaml.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union, get_args

from pydantic import AfterValidator, BaseModel, Field, model_validator

from pipeline.space.genotype import BETA_MODES, SPACES
from pipeline.space.models import DEPTHS
from pipeline.space.ops import resolve_op_set
from pipeline.training.train_config import SETTINGS, Device, PositiveFinite, invalid

Optimizer = Literal["darts", "gdas", "drnas"]
OPTIMIZERS = get_args(Optimizer)
Space = Literal[tuple(SPACES)]
Network = Literal[tuple(DEPTHS)]
BetaMode = Literal[BETA_MODES]
AdamBeta = Annotated[float, Field(ge=0, lt=1)]


def _valid_op_set(spec):
    resolve_op_set(spec)  # raises ValueError naming the unknown operators and the allowed ones
    return spec


OpSet = Annotated[Union[str, dict[str, list[str]]], AfterValidator(_valid_op_set),
                  Field(description="the candidate operators: poster (18 unary, 7 binary) | ramachandran (25, 10) | "
                        "grafs (23, 9) | {unary: [...], binary: [...]}")]


class DartsSettings(BaseModel):
    model_config = SETTINGS
    second_order: bool = Field(False, description="unrolled architecture gradient (about 3x slower)")


class GdasSettings(BaseModel):
    model_config = SETTINGS
    tau_max: PositiveFinite = Field(10.0, description="Gumbel temperature, annealed linearly to tau_min")
    tau_min: PositiveFinite = Field(0.1, description="the Gumbel temperature of the last epoch")


class DrnasSettings(BaseModel):
    model_config = SETTINGS
    regularizer: Literal["kl", "l2", "none"] = Field("kl", description="towards a flat Dirichlet prior, per edge: kl: "
                                                     "KL(Dir(elu(alpha)+1) || Dir(1)) | l2: reg_scale/2 * ||alpha||^2 "
                                                     "(the reference code's weight decay on alpha) | none")
    reg_scale: float = Field(1e-3, ge=0, allow_inf_nan=False, description="the regularizer's weight in the "
                                                                          "architecture loss")
    per_site_sample: bool = Field(False, description="an independent Dirichlet sample at every activation site "
                                                     "(DrNAS only: DARTS and GDAS refuse it)")


class SearchSettings(BaseModel):
    """Every setting one search reads (params.yaml `search` section, less the lists it crosses)."""
    model_config = SETTINGS

    op_set: OpSet = "grafs"
    network: Network = Field("resnet8", description="the supernet (CIFAR ResNet, depth 6n+2)")
    epochs: int = Field(10, ge=1, description="search epochs")
    batch_size: int = Field(64, ge=2, description="images per weight step and per architecture step")
    lr: PositiveFinite = Field(0.025, description="network weights: SGD, cosine decay to lr_min")
    lr_min: float = Field(0.001, ge=0, allow_inf_nan=False, description="network weights: the learning rate the "
                                                                       "cosine decay ends at")
    momentum: float = Field(0.9, ge=0, lt=1, description="network weights: SGD momentum")
    weight_decay: float = Field(3e-4, ge=0, allow_inf_nan=False, description="network weights: SGD weight decay")
    grad_clip: PositiveFinite = Field(5.0, description="network weights: max global gradient L2 norm")
    arch_lr: PositiveFinite = Field(3e-4, description="alphas (and betas with betas_with: arch): Adam's learning "
                                                      "rate")
    arch_betas: tuple[AdamBeta, AdamBeta] = Field((0.5, 0.999), strict=False, description="Adam's (beta1, beta2)")
    arch_weight_decay: float = Field(1e-3, ge=0, allow_inf_nan=False, description="Adam weight decay of the alphas "
                                     "(DARTS, GDAS, DrNAS with regularizer none; DrNAS with kl or l2 uses 0, its "
                                     "regularizer is the penalty) and of betas trained by the arch optimizer")
    beta_mode: BetaMode = Field("scalar", description="scalar: one beta per operator; channel: one per channel")
    betas_with: Literal["weights", "arch"] = Field("weights", description="which optimizer trains the betas")
    beta_init: Literal["default", "grafs"] = Field("default", description="default: each operator's beta_init | "
                                                   "grafs: N(1, 0.25) draws (GRAFS)")
    beta_clamp: Optional[PositiveFinite] = Field(None, description="before every forward pass of the supernet the "
                                                 "betas are projected into [-beta_clamp, beta_clamp], in place so the "
                                                 "gradient at the bound stays live (GRAFS: 10); null: free. A search-"
                                                 "time stabiliser only")
    warmup_epochs: int = Field(0, ge=0, description="epochs that train only the weights before the alphas move")
    warmstart_epochs: int = Field(0, ge=0, description="GRAFS: epochs whose weight steps run the network with "
                                   "plain ReLU while the arch step already trains the alphas on the mixed cell (its "
                                   "gradient reaches only the alphas and arch-trained betas, never the weights)")
    start_shrinking: Optional[int] = Field(None, ge=0, description="GRAFS: epoch (from 0) of the first operator drop "
                                   "of progressive shrinking; the lowest-weight operators are dropped, log-spaced over "
                                   "the remaining epochs, until one per edge is left; null: no shrinking")
    bn_recalibration_batches: int = Field(10, ge=0, description="every epoch the discretized network (argmax genotype, "
                                          "supernet's weights) is measured on the architecture split after this many "
                                          "training batches re-estimate its BatchNorm statistics; 0: none")
    select: Literal["best", "last"] = Field("last", description="the supernet of the epoch whose discretized network "
                                                                "is best | the last epoch")
    selection: Literal["argmax", "perturbation"] = Field("argmax", description="genotype from that supernet: argmax "
                                                       "of the operator weights | perturbation (DARTS-PT, Wang et al. "
                                                       "2021): on each edge, keep the operator whose removal lowers "
                                                       "validation top-1 most")
    amp: bool = Field(False, description="bf16 autocast on CUDA")
    darts: DartsSettings = DartsSettings()
    gdas: GdasSettings = GdasSettings()
    drnas: DrnasSettings = DrnasSettings()

    @model_validator(mode="after")
    def _warmup_leaves_search_epochs(self):
        if self.warmup_epochs >= self.epochs:
            raise invalid("warmup_epochs", self.warmup_epochs, f"0 <= warmup_epochs < epochs ({self.epochs})")
        if self.warmstart_epochs >= self.epochs:
            raise invalid("warmstart_epochs", self.warmstart_epochs, f"0 <= warmstart_epochs < epochs ({self.epochs})")
        if self.start_shrinking is not None and self.start_shrinking >= self.epochs:
            raise invalid("start_shrinking", self.start_shrinking, f"null or 0 <= start_shrinking < epochs "
                                                                   f"({self.epochs})")
        return self


# Options of one optimizer's section that the others cannot honour: (section, option, why).
OWN_OPTIONS = (("darts", "second_order", "only DARTS has a second-order variant"),
               ("drnas", "per_site_sample", "only DrNAS draws a sample per activation site"))


class SearchConfig(SearchSettings):
    """One search: the settings, its optimizer and space, and where it runs."""
    optimizer: Optimizer = "darts"
    space: Space = "simple"
    seed: int = Field(0, ge=0)
    device: Device = "auto"

    @model_validator(mode="after")
    def _own_options_only_for_their_optimizer(self):
        for owner, option, why in OWN_OPTIONS:
            if getattr(getattr(self, owner), option) and self.optimizer != owner:
                raise invalid(f"{owner}.{option}", True, f"false for optimizer {self.optimizer!r} ({why})")
        return self
