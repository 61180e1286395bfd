"""The depth check (pipeline.training.depth_check): its measurements against independent computations, its verdict
on functions known to be good (ReLU, Swish, GELU) and bad (the steep-sqrt mix, x^3, exp) at the default threshold,
and how the discretize stage, the evaluate stage and the results table report it. Random CIFAR-like tensors, small
batches: seconds."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.space.genotype import BASELINES, Genotype
from pipeline.space.models import build_resnet
from pipeline.space.ops import UNARY
from pipeline.study.config import ParamsError, load_params
from pipeline.training.depth_check import (DepthCheckSettings, block_profile, check_network, depth_check,
                                           mlflow_metrics, sgd_run, verdict)
from pipeline.training.device import seed_everything
from pipeline.training.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = load_params(ROOT / "params.yaml", check_paths=False)
# The old steep sqrt and the old interp took new names when GRAFS's definitions took `sqrt` and `interp`.
STEEP_SQRT_MIX = (Genotype("simple", ("relu", "sqrt_ramp", "interp_lin"), (None, None, 0.6222)) if "sqrt_ramp" in UNARY
                  else Genotype("simple", ("relu", "sqrt", "interp"), (None, None, 0.6222)))
GOOD = {"relu": BASELINES["relu"], "swish": BASELINES["swish"],
        "gelu": Genotype("simple", ("gelu", "zero", "left"), (None, None, None))}
BAD = {"relu/steep sqrt": STEEP_SQRT_MIX, "cube": Genotype("simple", ("cube", "zero", "left"), (None, None, None)),
       "exp": Genotype("simple", ("exp", "zero", "left"), (None, None, None))}
RECIPE = TrainConfig(epochs=1, batch_size=8, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def cifar_like(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator)


def network(name: str, genotype: Genotype = BASELINES["relu"], seed: int = 0):
    seed_everything(seed)
    return build_resnet(name, genotype.factory("scalar", False, None, "shared"))


def settings(**changes) -> DepthCheckSettings:
    return DEFAULTS.discretize.depth_check.model_copy(update=changes)


def test_second_moments_are_those_of_each_block_output():
    x, y = cifar_like(8)
    model = network("resnet8")
    profile = block_profile(model, x, y)
    with torch.no_grad():
        h = model.act(model.bn(model.conv(x)))
        expected = []
        for block in model.layers:  # train mode, as the profile runs: BatchNorm on the batch's statistics
            h = block(h)
            expected.append(h.pow(2).mean().item())
    assert profile["second_moments"] == pytest.approx(expected, rel=1e-5)
    assert len(profile["grad_norms"]) == len(model.layers) == 3


def test_last_block_gradient_is_the_closed_form_through_pooling_and_the_classifier():
    """dL_i/dh_i at the last block is (softmax_i - onehot_i) W / (H*W) at every position, so the per-image norm is
    |(p_i - y_i) W| / sqrt(H*W); the profile reports sqrt(mean_i of its square)."""
    x, y = cifar_like(8)
    model = network("resnet8")
    profile = block_profile(model, x, y)
    with torch.no_grad():
        h = model.layers(model.act(model.bn(model.conv(x))))
        logits = model.fc(h.mean(dim=(2, 3)))
        residual = F.softmax(logits, dim=1) - F.one_hot(y, 10).float()
        per_image = (residual @ model.fc.weight).norm(dim=1) / math.sqrt(h.shape[2] * h.shape[3])
    assert profile["grad_norms"][-1] == pytest.approx(per_image.pow(2).mean().sqrt().item(), rel=1e-4)
    assert profile["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_growth_and_spread_are_ratios_of_the_profile():
    x, y = cifar_like(8)
    result = check_network("resnet20", BASELINES["relu"].factory(), x, y, None, RECIPE, 0, lambda: seed_everything(0))
    norms, moments = result["grad_norms"], result["second_moments"]
    assert result["blocks"] == 9 and "sgd" not in result
    assert result["grad_growth"] == pytest.approx(norms[0] / norms[-1])
    assert result["grad_spread"] == pytest.approx(max(norms) / min(norms))
    assert result["forward_growth"] == pytest.approx(moments[-1] / moments[0])


def test_the_profile_does_not_depend_on_the_batch_size():
    """Per image: a batch and the same batch twice give the same gradient norms (BatchNorm's statistics too)."""
    x, y = cifar_like(8)
    once = block_profile(network("resnet8"), x, y)
    twice = block_profile(network("resnet8"), torch.cat([x, x]), torch.cat([y, y]))
    assert twice["grad_norms"] == pytest.approx(once["grad_norms"], rel=1e-3)


@pytest.mark.parametrize("name", sorted(GOOD) + sorted(BAD))
def test_known_good_functions_pass_and_known_bad_ones_are_flagged_on_resnet56(name):
    """At the default threshold (params.yaml), from the gradients at initialisation alone (no SGD run)."""
    genotype = (GOOD | BAD)[name]
    x, y = cifar_like(16)
    check = depth_check(genotype.factory(), ["resnet56"], x, y, None, RECIPE, settings(sgd_steps=0),
                        lambda: seed_everything(0))
    assert check["flagged"] == (name in BAD), check["summary"]
    assert check["summary"].startswith("flagged (x" if name in BAD else "ok (x")


def test_exp_is_caught_by_the_spread_where_first_over_last_block_misses_it():
    """exp's gradient collapses in the middle of ResNet-56 and grows again near the input."""
    x, y = cifar_like(16)
    result = check_network("resnet56", BAD["exp"].factory(), x, y, None, RECIPE, 0, lambda: seed_everything(0))
    assert result["grad_growth"] < settings().max_grad_spread < result["grad_spread"]


def test_sgd_run_clips_and_steps_at_the_recipe():
    """Plain SGD (no momentum, decay): the first step moves the weights by lr * the clipped gradient, and the
    reported norm is the one before clipping."""
    x, y = cifar_like(8)
    model = network("resnet8")
    loss = F.cross_entropy(model(x), y)
    expected_norm = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]).norm()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    recipe = TrainConfig(epochs=1, batch_size=8, lr=0.5, momentum=0.0, weight_decay=0.0, grad_clip=1e-3)
    run = sgd_run(model, iter([(x, y)]), recipe, steps=1)
    moved = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm()
    assert run["grad_norms"][0] == pytest.approx(expected_norm.item(), rel=1e-4)
    assert moved.item() == pytest.approx(0.5 * 1e-3, rel=1e-3)
    assert run["losses"] == [pytest.approx(loss.item(), rel=1e-5)] and not run["diverged"]


def test_sgd_run_stops_at_the_retrainings_divergence_rule_and_the_check_flags_it():
    x, y = cifar_like(8)
    recipe = RECIPE.model_copy(update={"divergence_loss": 1e-3})  # any real loss is above it
    check = depth_check(BASELINES["relu"].factory(), ["resnet8"], x, y, lambda: iter([(x, y)] * 5), recipe,
                        settings(sgd_steps=5), lambda: seed_everything(0))
    sgd = check["networks"]["resnet8"]["sgd"]
    assert (sgd["diverged"], sgd["diverged_step"], len(sgd["losses"])) == (True, 1, 1)
    assert check["flagged"] and "SGD diverged on resnet8 at step 1" in check["summary"]


def test_a_sound_short_sgd_run_lowers_the_loss_on_a_repeated_batch():
    x, y = cifar_like(16)
    check = depth_check(BASELINES["relu"].factory(), ["resnet8"], x, y, lambda: iter([(x, y)] * 10), RECIPE,
                        settings(sgd_steps=10), lambda: seed_everything(0))
    sgd = check["networks"]["resnet8"]["sgd"]
    assert not sgd["diverged"] and len(sgd["losses"]) == 10 and sgd["final_loss"] < sgd["initial_loss"]
    assert set(mlflow_metrics(check)) == {"depth.flagged", "depth.resnet8.grad_spread", "depth.resnet8.grad_growth",
                                          "depth.resnet8.forward_growth", "depth.resnet8.sgd_final_loss",
                                          "depth.resnet8.sgd_max_grad_norm"}


def test_every_network_starts_from_the_same_weights_and_batches():
    x, y = cifar_like(8)
    runs = [depth_check(BASELINES["relu"].factory(), ["resnet8", "resnet8"], x, y, lambda: iter([(x, y)] * 2),
                        RECIPE, settings(sgd_steps=2), lambda: seed_everything(3)) for _ in range(2)]
    assert list(runs[0]["networks"]) == ["resnet8"]  # a network named twice is checked once
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)


def test_verdict_names_every_reason_and_the_worst_network():
    fine = {"network": "resnet8", "grad_spread": 3.0}
    steep = {"network": "resnet56", "grad_spread": 1.4e4, "sgd": {"diverged": True, "diverged_step": 6}}
    assert verdict([fine], 100.0)["summary"] == "ok (x3 grad spread on resnet8)"
    flagged = verdict([fine, steep], 100.0)
    assert flagged["summary"] == "flagged (x1.4e+04 grad spread on resnet56; SGD diverged on resnet56 at step 6)"
    assert (flagged["worst_network"], flagged["worst_grad_spread"]) == ("resnet56", 1.4e4)
    overflow = verdict([{"network": "resnet20", "grad_spread": math.nan}], 100.0)
    assert overflow["flagged"] and overflow["reasons"] == ["non-finite gradients on resnet20"]


def test_unknown_or_no_networks_are_refused():
    x, y = cifar_like(4)
    for networks in ([], ["resnet9"]):
        with pytest.raises(ValueError, match="network"):
            depth_check(BASELINES["relu"].factory(), networks, x, y, None, RECIPE, settings(), lambda: None)


@pytest.mark.parametrize("key, value, message", [("max_grad_spread", 1.0, "greater than 1"),
                                                  ("extra_networks", ["resnet9"], "resnet56"),
                                                  ("sgd_steps", -1, "greater than or equal to 0")])
def test_bad_depth_check_params_are_one_line_naming_the_key(tmp_path, key, value, message):
    import yaml
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["discretize"]["depth_check"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=f"discretize.depth_check.{key}") as error:
        load_params(tmp_path / "params.yaml", check_paths=False)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_overflowing_run_is_diverged_with_an_infinite_largest_gradient():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        model[1].weight[0, 0] = math.inf
    run = sgd_run(model, iter([cifar_like(4)] * 3), RECIPE, steps=3)
    assert (run["diverged"], run["diverged_step"], run["max_grad_norm"]) == (True, 1, math.inf)
