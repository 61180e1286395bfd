"""The search's single steps with exact expected values: the weight step (SGD, clipping, skips, frozen alphas), the
architect's update and its skips, and the relaxations' bookkeeping (expected weights, entropy, state, factory).

Fast and small on purpose: these are the tests mutation testing runs (docs/development.md).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.search.architect import Architect
from pipeline.search.loop import SearchConfig, _weight_step
from pipeline.search.relax import Dirichlet, HardGumbel, Relaxation, Softmax, entropy, make_relaxation
from pipeline.training.metrics import MetricAccumulator
from tests.tiny_supernet import TinySupernetBase


pytestmark = pytest.mark.usefixtures("one_thread")


class TinySupernet(TinySupernetBase):
    """linear -> softmax(alpha)-mixed (x, tanh) -> linear, with the Supernet interface the steps use."""

    def __init__(self, relaxation: Relaxation | None = None):
        super().__init__(in_features=4, hidden=3, alpha=[0.3, -0.2], beta=[0.5], relaxation=relaxation)

    poison_gradient = False  # True: a finite loss whose backward pass overflows to inf

    def forward(self, x):
        mix = self.relaxation.weights(self.alpha_dict())["u1"]
        h = self.first(x)
        logits = self.last(mix[0] * h + mix[1] * torch.tanh(h) * self.beta)
        if self.poison_gradient and logits.requires_grad:
            logits.register_hook(lambda grad: grad * float("inf"))
        return logits


def data(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def config(grad_clip=5.0):
    return SearchConfig(optimizer="darts", epochs=2, batch_size=8, device="cpu", grad_clip=grad_clip)


# --- the weight step --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad_clip", [100.0, 0.05])
def test_weight_step_is_one_clipped_sgd_step_on_the_weights_only(grad_clip):
    net, (x, y) = TinySupernet(), data()
    before = [p.detach().clone() for p in net.weight_parameters()]
    alpha_before = net.alpha.detach().clone()
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), net.weight_parameters())
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    scale = min(1.0, grad_clip / (norm + 1e-6))
    optimizer = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    acc = MetricAccumulator()
    assert _weight_step(net, optimizer, x, y, config(grad_clip), torch.device("cpu"), acc)
    for p, b, g in zip(net.weight_parameters(), before, grads):
        assert torch.allclose(p.detach(), b - 0.1 * scale * g, atol=1e-6)
    assert torch.equal(net.alpha.detach(), alpha_before) and net.alpha.grad is None  # alphas frozen
    assert net.alpha.requires_grad  # and unfrozen again afterwards
    assert (grad_clip < norm) == (scale < 1)  # the clipped case clips
    with torch.no_grad():
        logits = TinySupernet()(x)  # the metrics are those of the pre-step forward pass
    result = acc.result()
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert result["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))


def test_weight_step_skips_a_non_finite_loss_without_applying_anything():
    net, (x, y) = TinySupernet(), data()
    before = [p.detach().clone() for p in net.weight_parameters()]
    optimizer, acc = torch.optim.SGD(net.weight_parameters(), lr=0.1), MetricAccumulator()
    assert not _weight_step(net, optimizer, x * float("nan"), y, config(), torch.device("cpu"), acc)
    assert all(torch.equal(p, b) for p, b in zip(net.weight_parameters(), before))
    assert acc.count == 0 and net.alpha.requires_grad


def test_weight_step_skips_a_non_finite_gradient_and_clears_it():
    net, (x, y) = TinySupernet(), data()
    net.poison_gradient = True
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, net.weight_parameters())
    assert torch.isfinite(loss) and not all(torch.isfinite(g).all() for g in grads)  # the case's premise
    before = [p.detach().clone() for p in net.weight_parameters()]
    optimizer, acc = torch.optim.SGD(net.weight_parameters(), lr=0.1), MetricAccumulator()
    assert not _weight_step(net, optimizer, x, y, config(), torch.device("cpu"), acc)
    assert all(torch.equal(p, b) for p, b in zip(net.weight_parameters(), before))
    assert all(p.grad is None for p in net.weight_parameters())
    assert acc.count == 0 and net.alpha.requires_grad


# --- the architecture step --------------------------------------------------------------------------------------
def test_architect_step_is_one_adam_step_on_the_validation_gradient_of_the_alphas():
    net, (x, y) = TinySupernet(), data()
    reference = TinySupernet()
    adam = torch.optim.Adam([reference.alpha], lr=0.01, betas=(0.5, 0.999), weight_decay=0.1)
    F.cross_entropy(reference(x), y).backward()
    adam.step()
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.1, train_betas=False)
    loss = architect.step(x, y)
    assert loss == pytest.approx(float(F.cross_entropy(TinySupernet()(x), y)), rel=1e-6)
    assert torch.allclose(net.alpha.detach(), reference.alpha.detach(), atol=1e-7)
    assert torch.equal(net.beta.detach(), torch.tensor([0.5]))  # betas belong to the weight optimizer here
    assert all(p.grad is None for p in net.weight_parameters())


def test_architect_trains_betas_when_asked_with_their_own_weight_decay():
    net, (x, y) = TinySupernet(Dirichlet("kl")), data()
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.1, train_betas=True)
    assert [g["weight_decay"] for g in architect.optimizer.param_groups] == [0.0, 0.1]
    assert architect.params == [net.alpha, net.beta]
    torch.manual_seed(0)
    architect.step(x, y)
    assert float(net.beta) == pytest.approx(0.5 - 0.01, abs=1e-6) or float(net.beta) == pytest.approx(0.5 + 0.01,
                                                                                                      abs=1e-6)


def test_architect_skips_a_non_finite_loss_and_applies_nothing():
    net, (x, y) = TinySupernet(), data()
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=True)
    assert architect.step(x * float("nan"), y) is None
    assert torch.equal(net.alpha.detach(), torch.tensor([0.3, -0.2])) and net.alpha.grad is None
    assert architect.optimizer.state == {}  # Adam's moments untouched


def test_architect_skips_a_non_finite_gradient():
    net, (x, y) = TinySupernet(), data()
    net.poison_gradient = True
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    loss = F.cross_entropy(net(x), y)
    grad, = torch.autograd.grad(loss, net.alpha)
    assert torch.isfinite(loss) and not torch.isfinite(grad).all()  # the case's premise
    assert architect.step(x, y) is None
    assert torch.equal(net.alpha.detach(), torch.tensor([0.3, -0.2]))


def test_architect_state_round_trips():
    net, (x, y) = TinySupernet(), data()
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    architect.step(x, y)
    other = Architect(TinySupernet(), lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    other.load_state_dict(architect.state_dict())
    assert torch.equal(other.optimizer.state_dict()["state"][0]["exp_avg"],
                       architect.optimizer.state_dict()["state"][0]["exp_avg"])


# --- relaxation bookkeeping -------------------------------------------------------------------------------------
def test_expected_weights_are_softmax_for_darts_and_gdas_and_the_dirichlet_mean_for_drnas():
    a = {"u1": torch.tensor([0.5, -1.0, 2.0], requires_grad=True)}
    for relax in (Softmax(), HardGumbel()):
        assert relax.expected(a)["u1"].tolist() == pytest.approx(torch.softmax(a["u1"].detach(), 0).tolist())
        assert not relax.expected(a)["u1"].requires_grad
    c = [1.5, math.exp(-1.0), 3.0]  # elu(alpha) + 1
    assert Dirichlet().expected(a)["u1"].tolist() == pytest.approx([v / sum(c) for v in c])


def test_softmax_weights_equal_softmax_of_the_alphas():
    a = {"u1": torch.tensor([0.5, -1.0, 2.0]), "b1": torch.tensor([0.0, 1.0])}
    for edge, w in Softmax().weights(a).items():
        assert w.tolist() == pytest.approx(torch.softmax(a[edge], 0).tolist())


def test_dirichlet_samples_lie_on_the_simplex_with_the_concentrations_mean():
    torch.manual_seed(0)
    a = {"u1": torch.tensor([0.5, -1.0, 2.0])}
    samples = torch.stack([Dirichlet().weights(a)["u1"] for _ in range(4000)])
    assert torch.allclose(samples.sum(1), torch.ones(4000))
    c = torch.tensor([1.5, math.exp(-1.0), 3.0])
    assert samples.mean(0).tolist() == pytest.approx((c / c.sum()).tolist(), abs=0.01)


def test_entropy_is_normalized_to_one_for_uniform_and_zero_for_one_hot():
    assert entropy(torch.full((4,), 0.25)) == pytest.approx(1.0)
    assert entropy(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-9)
    p = [0.7, 0.2, 0.1]
    assert entropy(torch.tensor(p)) == pytest.approx(-sum(v * math.log(v) for v in p) / math.log(3), rel=1e-6)
    assert entropy(torch.tensor([1.0])) == pytest.approx(0.0, abs=1e-9)


def test_base_relaxation_has_no_regularizer_no_state_and_keeps_the_weight_decay():
    a = {"u1": torch.tensor([0.5, -1.0])}
    for relax in (Softmax(), HardGumbel()):
        assert float(relax.regularizer(a)) == 0.0
        assert relax.arch_weight_decay(0.3) == 0.3
    assert Softmax().state_dict() == {} and Softmax().temperature is None and not Softmax().hard
    assert Dirichlet("none").arch_weight_decay(0.3) == 0.3
    with pytest.raises(NotImplementedError):
        Relaxation().weights(a)


def test_gdas_state_restores_temperature_and_noise_stream():
    relax = HardGumbel(5.0, 0.5, torch.Generator().manual_seed(4))
    relax.set_progress(1, 3)
    state = relax.state_dict()
    a = {"u1": torch.zeros(6)}
    relax.resample(a)
    first = relax.noise["u1"].clone()
    other = HardGumbel(5.0, 0.5)
    other.load_state_dict(state)
    other.resample(a)
    assert other.temperature == relax.temperature == pytest.approx(2.75)
    assert torch.equal(other.noise["u1"], first)


def test_gdas_weights_draw_a_sample_when_none_was_drawn():
    relax = HardGumbel(generator=torch.Generator().manual_seed(0))
    w = relax.weights({"u1": torch.zeros(4)})["u1"]
    assert sorted(w.tolist()) == [0.0, 0.0, 0.0, 1.0] and set(relax.index) == {"u1"}


def test_make_relaxation_builds_each_optimizer_with_its_settings():
    assert isinstance(make_relaxation("darts"), Softmax)
    gdas = make_relaxation("gdas", tau_max=4.0, tau_min=0.5, seed=3)
    assert (gdas.tau_max, gdas.tau_min, gdas.temperature) == (4.0, 0.5, 4.0)
    assert torch.equal(gdas.generator.get_state(), torch.Generator().manual_seed(3).get_state())
    drnas = make_relaxation("drnas", drnas_regularizer="l2", drnas_reg_scale=0.2)
    assert (drnas.kind, drnas.reg_scale, drnas.prior) == ("l2", 0.2, 1.0)
    with pytest.raises(ValueError, match=r"unknown search optimizer 'enas'; choose one of \['darts', 'drnas', 'gdas'\]"):
        make_relaxation("enas")
    with pytest.raises(ValueError, match="DrNAS regularizer must be 'kl', 'l2' or 'none', got 'l1'"):
        Dirichlet("l1")


def test_relaxation_defaults_are_the_published_ones():
    """GDAS anneals from 10 to 0.1 (Dong & Yang 2019); an unseeded HardGumbel draws from seed 0."""
    gdas = HardGumbel()
    assert (gdas.tau_max, gdas.tau_min, gdas.temperature) == (10.0, 0.1, 10.0)
    assert torch.equal(gdas.generator.get_state(), torch.Generator().manual_seed(0).get_state())
    made = make_relaxation("gdas")
    assert (made.tau_max, made.tau_min) == (10.0, 0.1)
    assert torch.equal(made.generator.get_state(), torch.Generator().manual_seed(0).get_state())
    drnas = make_relaxation("drnas")
    assert (drnas.kind, drnas.reg_scale) == ("kl", 1e-3)


def test_entropy_of_two_operators_is_normalized_by_log_two():
    assert entropy(torch.tensor([0.5, 0.5])) == pytest.approx(1.0)


def test_gdas_temperature_reaches_tau_min_in_the_last_of_two_epochs():
    relax = HardGumbel(10.0, 0.1)
    relax.set_progress(1, 2)
    assert relax.temperature == pytest.approx(0.1)


class WithUnusedParameters(TinySupernet):
    """An operator beta the sampled path never touches (GDAS) and a weight no loss reaches."""

    def __init__(self):
        super().__init__()
        self.idle_beta = nn.Parameter(torch.tensor([2.0]))
        self.idle_weight = nn.Parameter(torch.tensor([1.0]))

    def beta_parameters(self):
        return [self.beta, self.idle_beta]

    def weight_parameters(self):
        return super().weight_parameters() + [self.idle_weight]


@pytest.mark.parametrize("second_order", [False, True])
def test_architect_step_tolerates_parameters_the_loss_does_not_reach(second_order):
    net, (x, y) = WithUnusedParameters(), data()
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=True,
                          second_order=second_order)
    assert architect.step(x, y, *data(seed=1), weight_lr=0.1) is not None
    assert net.idle_beta.grad is None and float(net.idle_beta) == 2.0 and float(net.idle_weight) == 1.0
    assert not torch.equal(net.alpha.detach(), torch.tensor([0.3, -0.2]))


def test_second_order_step_applies_adam_to_the_unrolled_gradient():
    net, (x, y) = TinySupernet(), data()
    (xt, yt) = data(seed=1)
    architect = Architect(net, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False, second_order=True)
    reference = Architect(TinySupernet(), lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False,
                          second_order=True)
    loss, grads = reference._unrolled_grads(x, y, xt, yt, 0.3, 0.05)
    reference.supernet.alpha.grad = grads[0]
    reference.optimizer.step()
    assert architect.step(x, y, xt, yt, weight_lr=0.3, weight_decay=0.05) == pytest.approx(float(loss))
    assert torch.allclose(net.alpha.detach(), reference.supernet.alpha.detach(), atol=1e-7)
    # Adam's first moment holds the gradient it was given: the unrolled one, not the first-order one.
    assert torch.allclose(architect.optimizer.state[net.alpha]["exp_avg"], 0.5 * grads[0], atol=1e-7)
    fresh = TinySupernet()
    first_order, = torch.autograd.grad(F.cross_entropy(fresh(x), y), fresh.alpha)
    assert not torch.allclose(grads[0], first_order, atol=1e-4)


def test_second_order_step_without_a_weight_lr_is_the_first_order_step():
    """xi = 0 by default: no virtual step, no Hessian term; the reference's first-order DARTS."""
    (x, y), (xt, yt) = data(), data(seed=1)
    unrolled, plain = TinySupernet(), TinySupernet()
    second = Architect(unrolled, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False, second_order=True)
    first = Architect(plain, lr=0.01, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    second.step(x, y, xt, yt)
    first.step(x, y)
    assert torch.allclose(unrolled.alpha.detach(), plain.alpha.detach(), atol=1e-7)
    # Adam's first step moves by lr * sign(gradient): compare the gradients it stored, not only the step.
    assert torch.allclose(second.optimizer.state[unrolled.alpha]["exp_avg"],
                          first.optimizer.state[plain.alpha]["exp_avg"], atol=1e-7)


def test_dirichlet_defaults_are_the_reference_ones():
    assert (Dirichlet().kind, Dirichlet().reg_scale, Dirichlet().prior) == ("kl", 1e-3, 1.0)
