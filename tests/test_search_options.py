"""Search options that had no test: warm-up epochs, betas trained by the architecture optimizer, DrNAS per-site
samples (and their rejection for DARTS and GDAS), and the stage helpers (stale checkpoints, NaN to null, skipped
NaN architecture losses)."""
import json
import math

import pytest
import torch

from pipeline.data.augment import BatchLoader
from pipeline.search.cell import Supernet
from pipeline.search.loop import SearchConfig, build_supernet, run_search
from pipeline.search.relax import Dirichlet
from pipeline.training.checkpoint import CheckpointError
from pipeline.training.device import seed_everything
from stages.common import plain, resume_or_restart, write_json
from stages.search import epoch_metrics, trajectory_rows
from tests.train_subprocess_script import colour_task

OPS = {"unary": ["identity", "scale", "shift", "tanh"], "binary": ["add", "mul"]}  # scale, shift: betas


pytestmark = pytest.mark.usefixtures("one_thread")


def loaders():
    train = BatchLoader(*colour_task(32, seed=1), 16, shuffle=True, augment=False, seed=7)
    val = BatchLoader(*colour_task(32, seed=2), 16, shuffle=True, augment=False, seed=8)
    return train, val


def config(**overrides):
    base = dict(optimizer="darts", space="simple", op_set=OPS, network="resnet8", epochs=2, batch_size=16,
                device="cpu", seed=0, arch_lr=0.05)
    return SearchConfig(**base | overrides)


def initial_state(cfg: SearchConfig) -> dict:
    """Operator weights and betas of the supernet before any step (seeded as run_search seeds it)."""
    seed_everything(cfg.seed, deterministic=True)
    supernet = build_supernet(cfg)
    return {"operator_weights": supernet.operator_weights(), "betas": supernet.learned_betas()}


def flat(weights: dict) -> list[float]:
    return [w for edge in sorted(weights) for _, w in sorted(weights[edge].items())]


@pytest.mark.parametrize("betas_with", ["weights", "arch"])
def test_warmup_epochs_freeze_the_alphas_and_arch_betas_only_during_warmup(betas_with):
    cfg = config(warmup_epochs=1, betas_with=betas_with)
    warm, searched = run_search(cfg, *loaders()).history
    start = initial_state(cfg)
    assert math.isnan(warm["arch_loss"]) and math.isfinite(searched["arch_loss"])  # no arch step in warm-up
    assert flat(warm["operator_weights"]) == pytest.approx(flat(start["operator_weights"]), abs=1e-9)
    assert flat(searched["operator_weights"]) != pytest.approx(flat(warm["operator_weights"]), abs=1e-4)
    moved = {k: abs(warm["betas"][k] - start["betas"][k]) > 1e-6 for k in start["betas"]}
    assert set(moved) == {"u1__scale", "u1__shift", "u2__scale", "u2__shift"}
    if betas_with == "arch":  # the architecture optimizer owns the betas: frozen during warm-up, moving after
        assert not any(moved.values())
        assert any(abs(searched["betas"][k] - warm["betas"][k]) > 1e-4 for k in warm["betas"])
    else:  # SGD on the weights trains them from the first step
        assert all(moved.values())


def count_relaxation_draws(supernet: Supernet) -> list[torch.Tensor]:
    draws = []
    original = supernet.relaxation.weights

    def counted(alphas):
        weights = original(alphas)
        draws.append(weights["u1"].detach().clone())
        return weights

    supernet.relaxation.weights = counted
    return draws


@pytest.mark.parametrize("per_site", [False, True])
def test_drnas_per_site_sample_draws_one_sample_per_activation_site(per_site):
    torch.manual_seed(0)
    supernet = Supernet("resnet8", "simple", OPS, Dirichlet(), "scalar", per_site_sample=per_site)
    draws = count_relaxation_draws(supernet)
    supernet(torch.randn(2, 3, 8, 8))
    sites = len(supernet.sites())
    assert sites == 7  # ResNet8: the stem and two per residual block
    assert len(draws) == (sites if per_site else 1)
    if per_site:  # independent samples: all different
        assert len({tuple(d.tolist()) for d in draws}) == sites


@pytest.mark.parametrize("owner, option, why, optimizer", [
    ("drnas", "per_site_sample", "only DrNAS draws a sample per activation site", "darts"),
    ("drnas", "per_site_sample", "only DrNAS draws a sample per activation site", "gdas"),
    ("darts", "second_order", "only DARTS has a second-order variant", "gdas"),
    ("darts", "second_order", "only DARTS has a second-order variant", "drnas")])
def test_an_optimizer_only_option_is_rejected_for_the_others(owner, option, why, optimizer):
    with pytest.raises(ValueError, match=f"{owner}.{option} = True is invalid; allowed: false for optimizer "
                                         f"'{optimizer}' \\({why}\\)"):
        SearchConfig(optimizer=optimizer, **{owner: {option: True}})
    assert getattr(getattr(SearchConfig(optimizer=owner, **{owner: {option: True}}), owner), option)


# --- stage helpers ----------------------------------------------------------------------------------------------
def test_resume_or_restart_drops_a_stale_checkpoint_and_starts_over(tmp_path):
    checkpoint = tmp_path / "stage.pt"
    checkpoint.write_text("from a run with other settings")
    calls = []

    def work(path):
        calls.append(path.exists())
        if path.exists():
            raise CheckpointError("fingerprint differs")
        return "done"

    assert resume_or_restart(work, checkpoint) == "done"
    assert calls == [True, False] and not checkpoint.exists()


def test_resume_or_restart_reraises_when_there_is_no_checkpoint_to_drop(tmp_path):
    def work(path):
        raise CheckpointError("the input is broken")

    with pytest.raises(CheckpointError, match="the input is broken"):
        resume_or_restart(work, tmp_path / "none.pt")


def test_resume_or_restart_passes_a_good_checkpoint_through(tmp_path):
    checkpoint = tmp_path / "stage.pt"
    checkpoint.write_text("good")
    assert resume_or_restart(lambda path: path.read_text(), checkpoint) == "good"
    assert checkpoint.exists()


def test_records_turn_non_finite_numbers_into_null(tmp_path):
    record = {"loss": math.nan, "top1": math.inf, "low": -math.inf, "ok": 1.5, "nested": {"betas": (0.5, math.nan)},
              3: [math.nan, 2]}
    assert plain(record) == {"loss": None, "top1": None, "low": None, "ok": 1.5, "nested": {"betas": [0.5, None]},
                             "3": [None, 2]}
    write_json(tmp_path / "out" / "record.json", record)
    text = (tmp_path / "out" / "record.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["nested"] == {"betas": [0.5, None]}


def search_record(arch_loss, temperature):
    return {"train_loss": 1.0, "train_top1": 10.0, "train_top5": 50.0, "val_loss": 2.0, "val_top1": 12.0,
            "val_top5": 55.0, "lr": 0.1, "skipped_steps": 0, "epoch_time_s": 1.0, "arch_loss": arch_loss,
            "temperature": temperature, "operator_weights": {"u1": {"relu": 1.0}}, "entropy": {"u1": 0.0},
            "betas": {}, "discretized_val_loss": 2.1, "discretized_val_top1": 11.0, "discretized_val_top5": 50.0,
            "remaining_fraction": 0.5, "remaining": {"u1": 1}, "mask": {"u1": {"relu": True, "tanh": False}}}


def test_search_metrics_skip_a_nan_arch_loss_and_a_missing_temperature():
    warm = epoch_metrics(search_record(math.nan, None))
    assert "arch_loss" not in warm and "temperature" not in warm
    searched = epoch_metrics(search_record(0.7, 5.05))
    assert searched["arch_loss"] == 0.7 and searched["temperature"] == 5.05
    assert searched["val_top1"] == 12.0 and searched["discretized_val_top1"] == 11.0
    assert searched["mean_entropy"] == 0.0 and "weight" not in searched and "mask" not in searched


def test_search_epochs_log_a_handful_of_headline_metrics_and_the_trajectories_as_a_tidy_table():
    record = search_record(0.7, 5.05) | {"epoch": 3, "operator_weights": {"u1": {"relu": 0.75, "scale": 0.25}},
                                         "entropy": {"u1": 0.5, "u2": 0.1}, "betas": {"u1__scale": 0.4},
                                         "mask": {"u1": {"relu": True, "scale": False}}}
    assert len(epoch_metrics(record)) <= 20
    assert trajectory_rows([record]) == [
        {"epoch": 3, "edge": "u1", "operator": "relu", "weight": 0.75, "kept": 1, "beta": None},
        {"epoch": 3, "edge": "u1", "operator": "scale", "weight": 0.25, "kept": 0, "beta": 0.4}]
