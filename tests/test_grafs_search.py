"""The GRAFS parts of the search loop: ReLU warm start, BatchNorm recalibration, the discretized network measured
every epoch, best-epoch selection, perturbation-based selection, and a killed GRAFS search resuming bit-exactly."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.augment import BatchLoader
from pipeline.search import loop
from pipeline.search.architect import Architect
from pipeline.search.cell import MixedActivation
from pipeline.search.discretize import discretize
from pipeline.search.loop import SearchConfig, _weight_step, build_supernet, run_search
from pipeline.search.recalibrate import recalibrate_batchnorm
from pipeline.search.select import perturbation_genotype
from pipeline.space.models import build_resnet
from pipeline.training.metrics import MetricAccumulator
from tests import search_subprocess_script as script
from tests.train_subprocess_script import colour_task

OPS = {"unary": ["identity", "zero", "relu", "sigmoid", "tanh"], "binary": ["add", "mul", "sigmul"]}


pytestmark = pytest.mark.usefixtures("one_thread")


def loaders(count=32, batch=16):
    return [BatchLoader(*colour_task(count, seed=s), batch, shuffle=True, augment=False, seed=s) for s in (1, 2)]


def config(**changes):
    return SearchConfig(**{"optimizer": "darts", "space": "simple", "op_set": OPS, "epochs": 3, "batch_size": 16,
                           "device": "cpu", "seed": 0, "bn_recalibration_batches": 1, **changes})


def test_warm_start_runs_relu_in_the_weight_step_only_for_its_epochs(monkeypatch):
    """Which function every site computed, told from its output: relu(x) exactly, or the mixed cell."""
    state = {"phase": "eval", "epoch": 0}
    seen: dict[tuple, set] = {}
    forward, weight_step, arch_step = MixedActivation.forward, loop._weight_step, Architect.step

    def recording_forward(self, x):
        out = forward(self, x)
        seen.setdefault((state["phase"], state["epoch"]), set()).add(bool(torch.equal(out, F.relu(x))))
        return out

    def in_phase(phase, fn):
        def wrapped(*args, **kwargs):
            state["phase"] = phase
            try:
                return fn(*args, **kwargs)
            finally:
                state["phase"] = "eval"
        return wrapped

    monkeypatch.setattr(MixedActivation, "forward", recording_forward)
    monkeypatch.setattr(loop, "_weight_step", in_phase("weights", weight_step))
    monkeypatch.setattr(Architect, "step", in_phase("arch", arch_step))
    run_search(config(warmstart_epochs=2), *loaders(),
               on_epoch=lambda record: state.update(epoch=record["epoch"]))
    assert seen[("weights", 0)] == {True} and seen[("weights", 1)] == {True}
    assert seen[("weights", 2)] == {False}
    assert all(seen[("arch", epoch)] == {False} for epoch in range(3))  # the arch step always sees the cell
    assert all(seen[("eval", epoch)] == {False} for epoch in range(3))  # the supernet is measured as mixed


def test_arch_loss_does_not_reach_the_weights_during_warm_start():
    """One warm iteration (arch step, then the ReLU weight step) moves the weights exactly as one SGD step of a
    plain ReLU network on the training batch: nothing of the arch loss leaks into them."""
    cfg = config(warmstart_epochs=1)
    torch.manual_seed(0)
    supernet = build_supernet(cfg)
    reference = build_resnet(cfg.network)  # nn.ReLU activations
    missing, unexpected = reference.load_state_dict(supernet.net.state_dict(), strict=False)
    assert not missing and not unexpected
    (x, y), (xv, yv) = (next(iter(loader)) for loader in loaders())
    supernet.train(), reference.train()
    architect = Architect(supernet, lr=0.1, betas=cfg.arch_betas, weight_decay=0.0, train_betas=False)
    optimizer = torch.optim.SGD(supernet.weight_parameters() + supernet.beta_parameters(), lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    alphas = [a.detach().clone() for a in supernet.arch_parameters()]
    assert architect.step(xv, yv) is not None
    assert not any(torch.equal(a, b) for a, b in zip(alphas, supernet.arch_parameters()))  # the alphas moved
    assert all(p.grad is None for p in supernet.weight_parameters())
    supernet.cell.warm_relu = True
    assert _weight_step(supernet, optimizer, x, y, cfg, torch.device("cpu"), MetricAccumulator())
    ref_opt = torch.optim.SGD(reference.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    F.cross_entropy(reference(x), y).backward()
    nn.utils.clip_grad_norm_(list(reference.parameters()), cfg.grad_clip)
    ref_opt.step()
    got, want = dict(supernet.net.named_parameters()), dict(reference.named_parameters())
    assert set(got) == set(want)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-7), name


def test_recalibration_sets_batchnorm_to_the_batches_mean_and_variance_and_leaves_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Conv2d(4, 2, 1),
                          nn.BatchNorm2d(2))
    for bn in (model[1], model[4]):  # stale statistics, and affine parameters away from 1 and 0
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
        nn.init.normal_(bn.weight, 1.0, 0.3)
        nn.init.normal_(bn.bias, 0.0, 0.3)
    model.eval()
    batches = [(torch.randn(6, 3, 5, 5) * (i + 1) + i, torch.zeros(6)) for i in range(4)]
    weights = copy.deepcopy([p.detach().clone() for p in model.parameters()])
    assert recalibrate_batchnorm(model, batches, 3) == 3
    # By hand: per batch, channel mean and unbiased variance of each BatchNorm's input, averaged over the 3 batches
    # (the second layer's input normalised with the first layer's batch statistics, as in train mode).
    stats = {1: [], 4: []}
    with torch.no_grad():
        for x, _ in batches[:3]:
            h = model[0](x)
            stats[1].append((h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)))
            mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
            n = (h - mean) / torch.sqrt(var + model[1].eps) * model[1].weight[:, None, None] + \
                model[1].bias[:, None, None]
            g = model[3](torch.relu(n))
            stats[4].append((g.mean((0, 2, 3)), g.var((0, 2, 3), unbiased=True)))
    for index, pairs in stats.items():
        bn = model[index]
        assert torch.allclose(bn.running_mean, torch.stack([m for m, _ in pairs]).mean(0), atol=1e-5)
        assert torch.allclose(bn.running_var, torch.stack([v for _, v in pairs]).mean(0), rtol=1e-4)
        assert int(bn.num_batches_tracked) == 3
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert model[1].momentum == 0.3 and model[4].momentum == 0.1 and not model.training
    assert recalibrate_batchnorm(model, batches, 0) == 0


def test_perturbation_keeps_the_operator_whose_removal_hurts_most():
    supernet = build_supernet(config())
    cell = supernet.cell
    with torch.no_grad():  # argmax: tanh, tanh, mul
        for edge, name in (("u1", "tanh"), ("u2", "tanh"), ("b1", "mul")):
            cell.alphas[edge][cell.candidates[edge].index(name)] = 3.0
    # The fake validation accuracy: relu on u1 and sigmoid on u2 matter most, add on b1 (tanh and mul a little).
    value = {"u1": {"relu": 30.0, "tanh": 3.0}, "u2": {"sigmoid": 20.0, "tanh": 2.0}, "b1": {"add": 10.0, "mul": 1.0}}
    fixed_before = []

    def score(net):
        fixed_before.append(tuple(len(net.cell.active(e)) for e in ("u1", "u2", "b1")))
        return sum(value[e].get(n, 0.0) for e in value for n in net.cell.active(e))

    assert supernet.genotype().ops == ("tanh", "tanh", "mul")
    genotype, scores = perturbation_genotype(supernet, score)
    assert genotype.ops == ("relu", "sigmoid", "add")
    assert min(scores["u1"], key=scores["u1"].get) == "relu" and len(scores["u1"]) == 5
    # u1 is decided (one candidate) before u2 is measured, and both before b1.
    assert fixed_before[:5] == [(4, 5, 3)] * 5 and fixed_before[5:10] == [(1, 4, 3)] * 5
    assert fixed_before[10:] == [(1, 1, 2)] * 3
    assert all(len(cell.active(e)) == len(cell.candidates[e]) for e in cell.candidates)  # masks restored


def test_select_best_returns_the_supernet_of_the_best_discretized_epoch(monkeypatch):
    fake = iter([10.0, 40.0, 20.0])
    measured = loop.evaluate_discretized

    def fake_discretized(*args, **kwargs):
        return measured(*args, **kwargs) | {"top1": next(fake)}

    monkeypatch.setattr(loop, "evaluate_discretized", fake_discretized)
    result = run_search(config(select="best", arch_lr=0.05), *loaders())
    assert result.selected_epoch == 2
    chosen = result.history[1]
    assert result.genotype.to_dict() == chosen["genotype"]
    assert result.supernet.operator_weights() == chosen["operator_weights"]
    assert result.supernet.operator_weights() != result.history[-1]["operator_weights"]
    assert [r["discretized_val_top1"] for r in result.history] == [10.0, 40.0, 20.0]


def test_discretize_reports_the_gap_with_and_without_recalibration():
    train, val = loaders()
    result = run_search(config(epochs=1), train, val)
    genotype, gap = discretize(result.supernet, val, torch.device("cpu"), train_loader=train,
                               recalibration_batches=2)
    assert gap["discretization_gap_top1"] == pytest.approx(gap["supernet_val_top1"] - gap["discretized_val_top1"])
    assert gap["discretization_gap_top1_recalibrated"] == pytest.approx(
        gap["supernet_val_top1"] - gap["discretized_val_top1_recalibrated"])
    # The recalibrated accuracy is the one the search recorded for its last epoch (same genotype, same batches).
    recorded = run_search(config(epochs=1, bn_recalibration_batches=2), train, val).history[-1]
    assert gap["discretized_val_top1_recalibrated"] == recorded["discretized_val_top1"]
    assert genotype == result.genotype


@pytest.mark.slow
def test_killed_grafs_search_resumes_to_the_same_result(tmp_path):
    """SIGKILL in the middle of epoch 2 of a search with warm start, shrinking (the masks differ between the
    checkpoints), best-epoch and perturbation selection: the resumed run ends exactly where the reference ends."""
    _, _, killed = script.kill_and_resume(tmp_path, "--grafs")
    assert not killed["model"]["cell.mask_u1"].all()  # a mask after epoch 1's drops
