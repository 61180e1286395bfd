"""Exact values of the search optimizers' maths, each against a computation written independently in the test.

Each test names the bug it catches: a KL taken the wrong way round, a regularizer subtracted instead of added, a
straight-through term with the wrong sign, a sampler that does not follow softmax(alpha), a wrong temperature
schedule, a wrong second-order hypergradient, a discretization gap with the wrong sign.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.special import digamma, gammaln
from scipy.stats import chisquare

from pipeline.search.architect import Architect
from pipeline.search.cell import Supernet
from pipeline.search.discretize import discretize
from pipeline.search.relax import Dirichlet, HardGumbel, Softmax, make_relaxation
from tests.tiny_supernet import TinySupernetBase

SMALL_OPS = {"unary": ["identity", "zero", "sin", "square", "tanh"], "binary": ["add", "mul", "sub", "sigmul"]}
FAR_FROM_PRIOR = {"u1": [2.0, 1.5, 3.0, 2.5, 1.8], "b1": [1.2, 2.2, 2.8, 1.6]}  # every concentration well above 1


pytestmark = pytest.mark.usefixtures("one_thread")


def leaf_alphas(values: dict) -> dict:
    return {edge: torch.tensor(v, dtype=torch.float64, requires_grad=True) for edge, v in values.items()}


def dirichlet_kl(c: list[float], prior: list[float]) -> float:
    """KL(Dir(c) || Dir(prior)) from the closed form (lgamma / digamma), written out here, not torch's."""
    c0, p0 = sum(c), sum(prior)
    return (gammaln(c0) - sum(gammaln(ci) for ci in c) - gammaln(p0) + sum(gammaln(pi) for pi in prior)
            + sum((ci - pi) * (digamma(ci) - digamma(c0)) for ci, pi in zip(c, prior)))


def elu_plus_one(values: list[float]) -> list[float]:
    return [v + 1.0 if v > 0 else math.exp(v) for v in values]


# --- DrNAS ------------------------------------------------------------------------------------------------------
def test_drnas_kl_regularizer_equals_the_closed_form_kl_from_q_to_the_flat_prior():
    """Catches the KL taken the wrong way round (KL(prior || q)), a missing scale, or one Dirichlet over all edges."""
    values = {"u1": [-0.7, 0.2, 1.5, 3.0, -2.0], "b1": [0.4, -0.1, 2.2, 0.9]}
    reg = Dirichlet("kl", reg_scale=0.3).regularizer(leaf_alphas(values))
    expected = 0.3 * sum(dirichlet_kl(elu_plus_one(v), [1.0] * len(v)) for v in values.values())
    reverse = 0.3 * sum(dirichlet_kl([1.0] * len(v), elu_plus_one(v)) for v in values.values())
    assert float(reg.detach()) == pytest.approx(expected, rel=1e-9)
    assert abs(expected - reverse) > 0.1  # the case tells the two directions apart


def test_drnas_kl_gradient_equals_the_finite_difference_of_the_closed_form():
    values = {"u1": [-0.7, 0.2, 1.5, 3.0, -2.0]}
    a = leaf_alphas(values)
    Dirichlet("kl", reg_scale=1.0).regularizer(a).backward()
    h = 1e-6
    for i in range(5):
        up, down = list(values["u1"]), list(values["u1"])
        up[i] += h
        down[i] -= h
        numeric = (dirichlet_kl(elu_plus_one(up), [1.0] * 5) - dirichlet_kl(elu_plus_one(down), [1.0] * 5)) / (2 * h)
        assert float(a["u1"].grad[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_drnas_l2_penalises_alpha_itself_with_the_reference_weight_decay_gradient():
    """The reference's l2 is Adam weight decay reg_scale on alpha: gradient reg_scale * alpha (not on elu(alpha)+1)."""
    values = {"u1": [-0.7, 0.2, 1.5, 3.0, -2.0], "b1": [0.4, -0.1, 2.2, 0.9]}
    a = leaf_alphas(values)
    reg = Dirichlet("l2", reg_scale=0.2).regularizer(a)
    assert float(reg) == pytest.approx(0.2 * 0.5 * sum(v * v for vs in values.values() for v in vs), rel=1e-12)
    reg.backward()
    for edge, vs in values.items():
        assert a[edge].grad.tolist() == pytest.approx([0.2 * v for v in vs], rel=1e-12)


def test_drnas_without_regularizer_adds_exactly_zero():
    a = leaf_alphas(FAR_FROM_PRIOR)
    reg = Dirichlet("none", reg_scale=5.0).regularizer(a)
    assert float(reg) == 0.0


@pytest.mark.parametrize("kind, alpha_decay", [("kl", 0.0), ("l2", 0.0), ("none", 0.01)])
def test_drnas_alphas_take_weight_decay_only_without_a_regularizer(kind, alpha_decay):
    """The reference sets the alphas' Adam weight decay to 0 when the KL (or its l2) is the penalty."""
    net = Supernet("resnet8", "simple", "grafs", Dirichlet(kind), "scalar")  # grafs: operators with betas
    architect = Architect(net, lr=0.1, betas=(0.5, 0.999), weight_decay=0.01, train_betas=True)
    alphas_group, betas_group = architect.optimizer.param_groups
    assert alphas_group["weight_decay"] == alpha_decay and betas_group["weight_decay"] == 0.01
    assert {id(p) for p in alphas_group["params"]} == {id(p) for p in net.arch_parameters()}
    darts = Architect(Supernet("resnet8", "simple", SMALL_OPS, Softmax(), "scalar"), lr=0.1, betas=(0.5, 0.999),
                      weight_decay=0.01, train_betas=False)
    assert [g["weight_decay"] for g in darts.optimizer.param_groups] == [0.01]


def drnas_supernet(reg_scale: float, kind: str = "kl") -> Supernet:
    torch.manual_seed(0)
    net = Supernet("resnet8", "simple", SMALL_OPS, Dirichlet(kind, reg_scale=reg_scale), "scalar")
    with torch.no_grad():
        for edge, alpha in net.cell.alphas.items():
            alpha.copy_(torch.tensor(FAR_FROM_PRIOR[edge] if edge in FAR_FROM_PRIOR else FAR_FROM_PRIOR["u1"]))
    return net


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_architecture_loss_is_cross_entropy_plus_the_regularizer():
    """Catches the regularizer subtracted from (or left out of) the architecture loss."""
    net, (x, y) = drnas_supernet(reg_scale=0.5), batch()
    architect = Architect(net, lr=0.1, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    net.eval()  # BatchNorm running statistics: the two passes see the same network
    torch.manual_seed(1)
    loss = float(architect._loss(x, y))
    torch.manual_seed(1)  # the same Dirichlet sample
    cross_entropy = float(F.cross_entropy(net(x), y))
    kl = 0.5 * sum(dirichlet_kl(elu_plus_one(a.tolist()), [1.0] * a.numel()) for a in net.arch_parameters())
    assert kl > 1.0  # the regularizer matters in this case
    assert loss == pytest.approx(cross_entropy + kl, rel=1e-5)


def test_one_adam_step_moves_concentrations_far_from_the_prior_towards_it():
    """With the KL dominating, one step must lower the KL to the prior and every edge's total concentration
    (all concentrations start well above the prior's 1). Catches a regularizer that pushes the wrong way."""
    net, (x, y) = drnas_supernet(reg_scale=100.0), batch()
    architect = Architect(net, lr=0.05, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    before = [Dirichlet.concentration(a.detach()).tolist() for a in net.arch_parameters()]
    assert architect.step(x, y) is not None
    after = [Dirichlet.concentration(a.detach()).tolist() for a in net.arch_parameters()]
    for old, new in zip(before, after):
        assert len(old) < sum(new) < sum(old) - 0.04  # Adam's first step: about lr per coordinate
    kl = lambda cs: sum(dirichlet_kl(c, [1.0] * len(c)) for c in cs)  # noqa: E731
    assert kl(after) < kl(before) - 0.01


# --- GDAS -------------------------------------------------------------------------------------------------------
def gumbel_noise(shape, seed: int) -> torch.Tensor:
    """The Gumbel(0, 1) noise that a generator seeded with `seed` gives: -log(-log(U))."""
    uniform = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-10)))


@pytest.mark.parametrize("epoch", [0, 2])
def test_gdas_straight_through_gradient_is_the_softmax_jacobian_row_of_the_sampled_operator(epoch):
    """Catches the straight-through term with its sign reversed, a missing temperature, or the wrong row."""
    relax = HardGumbel(10.0, 0.1, torch.Generator().manual_seed(7))
    relax.set_progress(epoch, 5)
    tau = relax.temperature
    a = torch.tensor([0.3, -0.2, 0.9, 0.1, -1.1], requires_grad=True)
    relax.resample({"u1": a})
    noise = gumbel_noise(5, seed=7)
    k = int(torch.argmax(a.detach() + noise))
    assert relax.index["u1"] == k
    weights = relax.weights({"u1": a})["u1"]
    assert weights.tolist() == F.one_hot(torch.tensor(k), 5).float().tolist()
    weights[k].backward()
    s = torch.softmax((a.detach() + noise) / tau, dim=0).tolist()
    expected = [s[k] * ((1.0 if j == k else 0.0) - s[j]) / tau for j in range(5)]  # d s_k / d alpha_j
    assert a.grad.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-8)
    assert max(abs(v) for v in expected) > 1e-3  # a gradient large enough to tell a sign flip


def test_gdas_samples_follow_softmax_of_the_alphas():
    """Gumbel-max sampling: argmax(alpha + g) is distributed as softmax(alpha) (chi-square, fixed seed)."""
    a = torch.tensor([1.0, 0.0, -0.5, 0.5, -1.0])
    relax, draws = HardGumbel(generator=torch.Generator().manual_seed(3)), 4000
    counts = [0] * 5
    for _ in range(draws):
        relax.resample({"u1": a})
        counts[relax.index["u1"]] += 1
    expected = (torch.softmax(a, 0) * draws).tolist()
    assert chisquare(counts, expected).pvalue > 0.01
    assert chisquare(counts, [draws / 5] * 5).pvalue < 1e-6  # the test can tell softmax(alpha) from uniform


@pytest.mark.parametrize("epoch, epochs, tau", [(0, 5, 10.0), (1, 5, 7.525), (2, 5, 5.05), (4, 5, 0.1),
                                                (0, 1, 10.0), (1, 3, 5.05)])
def test_gdas_temperature_is_linear_from_tau_max_to_tau_min(epoch, epochs, tau):
    relax = HardGumbel(10.0, 0.1)
    relax.set_progress(epoch, epochs)
    assert relax.temperature == pytest.approx(tau, rel=1e-12)


def test_gdas_temperature_bounds_are_checked():
    with pytest.raises(ValueError, match="tau_max >= tau_min > 0"):
        HardGumbel(0.1, 1.0)
    with pytest.raises(ValueError, match="tau_max >= tau_min > 0"):
        HardGumbel(1.0, 0.0)
    assert HardGumbel(1.0, 1.0).temperature == 1.0


# --- DARTS second order -----------------------------------------------------------------------------------------
class TinySupernet(TinySupernetBase):
    """linear -> a softmax-mixed activation (tanh, sin, x, x^2) -> linear: what the architect needs, small enough
    to differentiate through a virtual SGD step exactly."""

    OPS = (torch.tanh, torch.sin, lambda v: v, torch.square)

    def __init__(self):
        super().__init__(in_features=6, hidden=5, alpha=[0.2, -0.1, 0.3, -0.4], scale=0.7)

    def forward(self, x, weights=None):
        w = self.weight_parameters() if weights is None else weights
        mix = torch.softmax(self.alpha, 0)
        h = F.linear(x, w[0], w[1])
        h = sum(m * op(h) for m, op in zip(mix, self.OPS))
        return F.linear(h, w[2], w[3])


def second_order_case(val_scale: float = 1.0):
    """The tiny supernet, train and validation batches (validation inputs scaled by `val_scale`) and the
    architect."""
    torch.manual_seed(0)
    net = TinySupernet()
    g = torch.Generator().manual_seed(1)
    x_train, y_train = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    x_val, y_val = val_scale * torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    architect = Architect(net, lr=0.1, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False, second_order=True)
    return net, (x_val, y_val, x_train, y_train), architect


def virtual_step(net, batches, xi: float, wd: float, create_graph: bool) -> list[torch.Tensor]:
    """w' = w - xi * (dL_train/dw + wd * w), differentiable through dL_train/dw with `create_graph`."""
    x_train, y_train = batches[2:]
    weights = net.weight_parameters()
    train_grads = torch.autograd.grad(F.cross_entropy(net(x_train), y_train), weights, create_graph=create_graph)
    return [w - xi * (gw + wd * w) for w, gw in zip(weights, train_grads)]


def exact_hypergradient(net, batches, xi: float, wd: float, first_order: bool = False) -> torch.Tensor:
    """d/d alpha of L_val(w - xi * (dL_train/dw + wd * w), alpha) by double backward (no finite differences)."""
    x_val, y_val = batches[:2]
    virtual = virtual_step(net, batches, xi, wd, create_graph=True)
    if first_order:
        virtual = [v.detach() for v in virtual]
    exact, = torch.autograd.grad(F.cross_entropy(net(x_val, virtual), y_val), net.alpha)
    return exact


def test_second_order_darts_hypergradient_matches_autograd_through_the_virtual_step():
    """Catches a wrong sign or scale of the Hessian term, a missing weight decay in the virtual step, or a
    finite-difference step that does not restore the weights."""
    net, batches, architect = second_order_case()
    xi, wd = 0.5, 0.1
    before = [p.detach().clone() for p in net.weight_parameters()]
    _, grads = architect._unrolled_grads(*batches, xi, wd)
    assert all(torch.equal(p, b) for p, b in zip(net.weight_parameters(), before))
    exact = exact_hypergradient(net, batches, xi, wd)
    first_order = exact_hypergradient(net, batches, xi, wd, first_order=True)
    assert (exact - first_order).abs().max() > 50 * 1e-4  # the Hessian term is large enough to be tested
    assert grads[0].tolist() == pytest.approx(exact.tolist(), abs=1e-4)


def test_second_order_finite_difference_step_is_small_whatever_the_gradient_norm():
    """The Hessian-vector product's step is 0.01 / ||dL_val/dw'|| along dL_val/dw', so the weights move by 0.01
    whatever the gradient's size. Catches a step that grows with the norm (0.01 * norm: here the weights would
    move by ~norm^2 / 100 and the difference quotient would be far from the derivative)."""
    net, batches, architect = second_order_case(val_scale=30.0)
    xi, wd = 0.5, 0.1
    _, grads = architect._unrolled_grads(*batches, xi, wd)
    x_val, y_val = batches[:2]
    virtual = [v.detach().requires_grad_() for v in virtual_step(net, batches, xi, wd, create_graph=False)]
    dw = torch.autograd.grad(F.cross_entropy(net(x_val, virtual), y_val), virtual)
    assert math.sqrt(sum(float((g ** 2).sum()) for g in dw)) > 20  # far from 1: the two step rules differ
    exact = exact_hypergradient(net, batches, xi, wd)
    assert grads[0].tolist() == pytest.approx(exact.tolist(), rel=2e-2, abs=1e-4)


def test_architect_step_takes_no_weight_decay_in_the_virtual_step_unless_given():
    """`step` without weight_decay: the hypergradient of a virtual step without decay (catches a non-zero
    default)."""
    net, batches, architect = second_order_case()
    xi = 0.5
    exact, decayed = exact_hypergradient(net, batches, xi, 0.0), exact_hypergradient(net, batches, xi, 1.0)
    assert (exact - decayed).abs().max() > 50 * 1e-4  # a default decay of 1 would be seen
    architect.step(*batches, weight_lr=xi)  # before the step's Adam update moves alpha, grad holds the gradient
    assert net.alpha.grad.tolist() == pytest.approx(exact.tolist(), abs=1e-4)


# --- discretization gap -----------------------------------------------------------------------------------------
def test_discretization_gap_is_supernet_minus_discretized_top1_on_a_hand_built_case():
    """The argmax genotype is zero(x) + zero(x) = 0: the discretized network outputs its classifier bias, which
    favours class 1, on every image; the mixed supernet predicts other classes. With 30 images labelled as the
    supernet predicts and 10 labelled 1, the supernet scores 75%, the discretized network 25%: gap +50 points.
    Catches a gap taken the other way round or measured on the wrong network."""
    torch.manual_seed(0)
    net = Supernet("resnet8", "simple", SMALL_OPS, make_relaxation("darts"), "scalar").eval()
    with torch.no_grad():
        for edge in ("u1", "u2"):
            net.cell.alphas[edge].copy_(torch.tensor([0.0, 0.05, 0.0, 0.0, 0.0]))  # zero wins, barely
        net.cell.alphas["b1"].copy_(torch.tensor([0.05, 0.0, 0.0, 0.0]))  # add
        net.net.fc.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
        net.net.fc.bias.copy_(0.1 * torch.eye(10)[1])
    assert net.genotype().ops == ("zero", "zero", "add")
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        supernet_pred = net(x).argmax(1)
    assert not (supernet_pred == 1).any()  # the case's premise
    labels = torch.cat([supernet_pred[:30], torch.ones(10, dtype=torch.long)])
    _, gap = discretize(net, [(x[:16], labels[:16]), (x[16:], labels[16:])], "cpu")
    assert (gap["supernet_val_top1"], gap["discretized_val_top1"]) == (75.0, 25.0)
    assert gap["discretization_gap_top1"] == 50.0

    _, gap = discretize(net, [(x, torch.ones(40, dtype=torch.long))], "cpu")  # the discretized network wins
    assert (gap["supernet_val_top1"], gap["discretized_val_top1"], gap["discretization_gap_top1"]) == \
        (0.0, 100.0, -100.0)
