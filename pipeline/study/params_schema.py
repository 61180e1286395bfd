"""The schema of params.yaml: every section and key with the check its value must pass.

`check_section` walks a params mapping against `SCHEMA`: unknown keys are rejected with a close-match
suggestion, missing ones named, and each value checked (generic checks in `pipeline.study.param_checks`, those that
need the library here). The typed parameters and `load_params` are in `pipeline.study.config`.
"""
from __future__ import annotations

import difflib
import re
from typing import Any

from pipeline.training.device import resolve_device
from pipeline.space.genotype import BASELINES, BETA_MODES, SPACES
from pipeline.space.models import DEPTHS
from pipeline.space.ops import resolve_op_set
from pipeline.study.param_checks import ParamsError, bad, boolean, choice, integer, list_of, number, optional, text
from pipeline.search.loop import OPTIMIZERS
from pipeline.search.select import SELECTIONS
from pipeline.training.train_config import SCHEDULES

CUSTOM_DIR = "activations"  # user-supplied genotypes: activations/<name>.json
CUSTOM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # '-' separates matrix values in DVC stage names


# --- checks that need the library (pipeline.study.param_checks holds the generic ones) -----------------------------
def device(key, value):
    try:
        resolve_device(text(key, value))
    except ValueError as err:
        raise ParamsError(f"params.yaml: {key} = {value!r} is invalid; {err}") from None
    return value


def op_set(key, value):
    try:
        resolve_op_set(value)
    except (ValueError, TypeError) as err:
        raise ParamsError(f"params.yaml: {key} = {value!r} is invalid; {err}") from None
    return value


def arch_betas(key, value):
    if not (isinstance(value, list) and len(value) == 2 and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < 1 for v in value)):
        raise bad(key, value, "two numbers in [0, 1), Adam's (beta1, beta2), e.g. [0.5, 0.999]")
    return tuple(float(v) for v in value)


def custom_name(key, value):
    if not isinstance(value, str) or not CUSTOM_NAME.match(value):
        raise bad(key, value, f"a name of lower-case letters, digits and '_' (the file {CUSTOM_DIR}/<name>.json)")
    return value


# --- the schema: section -> key -> check (a nested dict is a sub-section) -------------------------------------
SCHEMA: dict[str, dict[str, Any]] = {
    "study": {"experiment": text, "tracking_uri": optional(text), "mlflow": boolean, "device": device},
    "data": {"source": text, "cache_dir": text, "train_size": optional(integer(1)), "test_size": optional(integer(1)),
             "search_train_size": integer(1), "search_val_size": integer(1), "seed": integer(0)},
    "search": {
        "optimizers": list_of(choice(OPTIMIZERS)), "spaces": list_of(choice(SPACES)), "op_set": op_set,
        "network": choice(DEPTHS), "epochs": integer(1), "batch_size": integer(2), "lr": number(0, low_open=True),
        "lr_min": number(0), "momentum": number(0, 1), "weight_decay": number(0), "grad_clip": number(0, low_open=True),
        "arch_lr": number(0, low_open=True), "arch_betas": arch_betas, "arch_weight_decay": number(0),
        "beta_mode": choice(BETA_MODES), "betas_with": choice(("weights", "arch")), "warmup_epochs": integer(0),
        "warmstart_epochs": integer(0), "start_shrinking": optional(integer(0)),
        "bn_recalibration_batches": integer(0), "select": choice(("best", "last")), "selection": choice(SELECTIONS),
        "seed": integer(0), "amp": boolean,
        "darts": {"second_order": boolean},
        "gdas": {"tau_max": number(0, low_open=True), "tau_min": number(0, low_open=True)},
        "drnas": {"regularizer": choice(("kl", "l2", "none")), "reg_scale": number(0), "per_site_sample": boolean},
    },
    "preflight": {"min_free_mb": number(0)},
    "discretize": {"batch_size": integer(1)},
    "evaluate": {
        "networks": list_of(choice(DEPTHS)), "seeds": list_of(integer(0)), "baselines": list_of(choice(BASELINES)),
        "custom": list_of(custom_name, allow_empty=True), "epochs": integer(1), "batch_size": integer(2),
        "test_batch_size": integer(1), "lr": number(0, low_open=True), "momentum": number(0, 1),
        "nesterov": boolean, "weight_decay": number(0), "schedule": choice(SCHEDULES),
        "milestones": list_of(integer(1), allow_empty=True), "gamma": number(0, 1, low_open=True, high_open=False),
        "warmup_epochs": integer(0), "label_smoothing": number(0, 1), "grad_clip": optional(number(0, low_open=True)),
        "amp": boolean, "beta_mode": choice(BETA_MODES), "train_betas": boolean,
        "divergence_loss": number(0, low_open=True), "chance_margin": number(0, 100),
    },
}


def check_section(schema: dict, values: Any, prefix: str) -> dict:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(values, dict):
        raise bad(prefix.rstrip(".") or "params.yaml", values, f"a mapping with keys {sorted(schema)}")
    for key in values:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ParamsError(f"params.yaml: unknown key {prefix}{key}{hint}; allowed keys in {where}: "
                              f"{sorted(schema)}")
    missing = [key for key in schema if key not in values]
    if missing:
        raise ParamsError(f"params.yaml: {prefix}{missing[0]} is missing from {where}; every key is required "
                          f"(see presets/full.yaml or docs/pipeline.md for its meaning)")
    return {key: check_section(check, values[key], f"{prefix}{key}.") if isinstance(check, dict)
            else check(f"{prefix}{key}", values[key]) for key, check in schema.items()}
