"""One retraining rule for every activation (docs/science.md): the gradient norm every step logs, the same clipping
for all, searched betas frozen by default and, when trained, held within the search's bound."""
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pipeline.data.augment import BatchLoader
from pipeline.space.genotype import Genotype
from pipeline.space.models import build_resnet
from pipeline.training.device import seed_everything
from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig
from tests.train_subprocess_script import colour_task

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
pytestmark = pytest.mark.usefixtures("one_thread")


def loaders(count):
    train = BatchLoader(*colour_task(count, 1), BATCH, shuffle=True, augment=False, seed=3)
    test = BatchLoader(*colour_task(16, 2), 16, shuffle=False, augment=False)
    return train, test


def fresh_model():
    seed_everything(0)
    return build_resnet("resnet8")


def manual_gradients(model, x, y):
    model.zero_grad(set_to_none=True)
    nn.CrossEntropyLoss()(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_each_step_logs_the_global_gradient_norm_before_clipping():
    # lr 0: the weights never move, so every step's gradient can be recomputed on its own batch
    train, test = loaders(32)
    model, reference = fresh_model(), fresh_model()
    norms = []
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=0.0, momentum=0.0, device="cpu", seed=0, grad_clip=1e-3)
    result = train_model(model, train, test, cfg, progress=False, on_step=lambda step, n: norms.append((step, n)))
    train.set_epoch(0)
    want = [math.sqrt(sum(float((g.double() ** 2).sum()) for g in manual_gradients(reference, x, y)))
            for x, y in train]
    assert [step for step, _ in norms] == list(range(len(want))) and len(want) == 4
    assert [n for _, n in norms] == pytest.approx(want, rel=1e-5)  # the norm before the 1e-3 clip
    record = result.history[0]
    assert record["grad_norm_max"] == pytest.approx(max(want), rel=1e-5)
    assert record["grad_norm_mean"] == pytest.approx(sum(want) / len(want), rel=1e-5)


@pytest.mark.parametrize("clip_fraction", [0.25, None])
def test_clipping_scales_the_first_step_to_the_clip_norm(clip_fraction):
    train, test = loaders(BATCH)  # one batch: one step
    model, reference = fresh_model(), fresh_model()
    x, y = next(iter(train))
    grads = manual_gradients(reference, x, y)
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    clip = None if clip_fraction is None else clip_fraction * norm
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=0.5, momentum=0.0, weight_decay=0.0, device="cpu", seed=0,
                      grad_clip=clip)
    before = [p.detach().clone() for p in reference.parameters()]
    train_model(model, train, test, cfg, progress=False)
    scale = 1.0 if clip is None else clip / (norm + 1e-6)  # torch's clip coefficient
    for after, start, g in zip(model.parameters(), before, grads):
        assert torch.allclose(after.detach(), start - 0.5 * scale * g, atol=1e-6)


MIX = Genotype("simple", ("relu", "sqrt", "interp"), (None, None, 1.5))


@pytest.mark.parametrize("betas", ["shared", "per_site"])
def test_trained_betas_are_projected_into_the_search_bound(betas):
    factory = MIX.factory("scalar", train_betas=True, betas=betas, beta_bound=10.0)
    activation = factory(4)
    activation.beta["b1"].data.fill_(37.0)  # where an optimizer step could take it
    x = torch.randn(2, 4, 3, 3)
    activation.eval()
    out = activation(x)
    assert activation.beta["b1"].item() == 10.0
    s = torch.sigmoid(torch.tensor(10.0))
    assert torch.allclose(out, s * torch.relu(x) + (1 - s) * torch.sqrt(x.clamp(min=1e-3)))
    activation.beta["b1"].data.fill_(-12.0)
    activation.train()(x)
    assert activation.beta["b1"].item() == -10.0


def test_unbounded_and_frozen_betas_are_left_alone():
    free = MIX.factory("scalar", train_betas=True)(4)
    free.beta["b1"].data.fill_(37.0)
    free(torch.randn(1, 4, 2, 2))
    assert free.beta["b1"].item() == 37.0
    frozen = MIX.factory("scalar", train_betas=False, beta_bound=10.0)(4)
    assert not frozen.beta["b1"].requires_grad and frozen.beta["b1"].item() == 1.5


def test_a_bound_must_be_positive():
    with pytest.raises(ValueError, match="beta_bound must be positive"):
        MIX.factory("scalar", train_betas=True, beta_bound=0.0)(4)


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_every_shipped_study_retrains_by_the_one_rule(path):
    """Retraining clips as the search does, for every activation, and keeps the searched betas."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in (yaml.safe_load(path.read_text()) or {}).items():  # a preset may overlay a few keys
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
    assert base["evaluate"]["grad_clip"] == base["search"]["grad_clip"] == 5.0
    assert base["evaluate"]["train_betas"] is False
