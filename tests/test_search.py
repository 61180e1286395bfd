"""Relaxations, the supernet, the architecture step and the bilevel search loop."""
import dataclasses
import math

import pytest
import torch
from pydantic import ValidationError
import torch.nn.functional as F

from pipeline.kernels import fused
from pipeline.search import fused_site
from pipeline.search.architect import Architect
from pipeline.data.augment import BatchLoader
from pipeline.search.cell import MixedActivation, SearchCell, Supernet, discretized_network
from pipeline.space.genotype import SWISH, Genotype
from pipeline.space.ops import UNARY
from pipeline.search.relax import Dirichlet, HardGumbel, Softmax, make_relaxation
from pipeline.search.loop import TIMING_KEYS, SearchConfig, build_supernet, run_search
from pipeline.search.skips import SearchDiverged

SMALL_OPS = {"unary": ["identity", "zero", "sin", "square", "tanh"], "binary": ["add", "mul", "sub", "sigmul"]}


pytestmark = pytest.mark.usefixtures("one_thread")


def alphas(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"u1": torch.randn(5, generator=g, requires_grad=True), "b1": torch.randn(4, generator=g, requires_grad=True)}


def test_softmax_weights_are_a_distribution():
    for w in Softmax().weights(alphas()).values():
        assert torch.all(w >= 0) and torch.isclose(w.sum(), torch.tensor(1.0))


def test_dirichlet_samples_lie_on_the_simplex_and_vary():
    relax, a = Dirichlet(), alphas()
    first, second = relax.weights(a), relax.weights(a)
    for edge in a:
        assert torch.all(first[edge] >= 0) and torch.isclose(first[edge].sum(), torch.tensor(1.0))
        assert not torch.equal(first[edge], second[edge])
    reg = relax.regularizer(a)
    reg.backward()
    assert reg > 0 and all(t.grad is not None and t.grad.abs().sum() > 0 for t in a.values())


def test_dirichlet_regularizer_is_per_edge():
    relax, a = Dirichlet(reg_scale=1.0), alphas()
    total = relax.regularizer(a)
    parts = sum(relax.regularizer({k: v}) for k, v in a.items())
    assert torch.isclose(total, parts)


def test_gdas_is_one_hot_with_straight_through_gradients_and_anneals():
    relax, a = HardGumbel(10.0, 0.1), alphas()
    relax.resample(a)
    weights = relax.weights(a)
    for edge, w in weights.items():
        assert w.detach().tolist() == F.one_hot(torch.tensor(relax.index[edge]), w.numel()).float().tolist()
    (weights["u1"][relax.index["u1"]] * 3.0).backward()
    assert a["u1"].grad.abs().sum() > 0
    relax.set_progress(0, 5)
    assert relax.temperature == 10.0
    relax.set_progress(4, 5)
    assert relax.temperature == pytest.approx(0.1)


def test_gdas_computes_only_the_sampled_operator(monkeypatch):
    # The plain reference cell: count the operator calls.
    calls = []
    for name in SMALL_OPS["unary"]:
        op = UNARY[name]
        counted = (lambda fn, n: lambda *args: calls.append(n) or fn(*args))(op.fn, name)
        monkeypatch.setitem(UNARY, name, dataclasses.replace(op, fn=counted))
    cell = SearchCell("simple", SMALL_OPS, HardGumbel())
    site = MixedActivation(cell, 4)
    cell.relaxation.resample(cell.alpha_dict())
    sampled = [SMALL_OPS["unary"][cell.relaxation.index[e]] for e in ("u1", "u2")]
    with fused.using("off"), cell.forward_pass():
        site(torch.randn(2, 4, 3, 3))
    assert sorted(calls) == sorted(sampled)  # one operator per unary edge, no more
    # The fused cell is handed exactly the sampled operator on every edge.
    seen = []
    real = fused_site.fused_cell
    monkeypatch.setattr(fused_site, "fused_cell", lambda space, candidates, *rest, **kw: seen.append(candidates)
                        or real(space, candidates, *rest, **kw))
    with fused.using("eager"), cell.forward_pass():
        site(torch.randn(2, 4, 3, 3))
    assert seen and [list(c) for c in seen[0]] == [[sampled[0]], [sampled[1]],
                                                   [SMALL_OPS["binary"][cell.relaxation.index["b1"]]]]


@pytest.mark.parametrize("optimizer", ["darts", "gdas", "drnas"])
@pytest.mark.parametrize("space", ["simple", "complex"])
@pytest.mark.parametrize("beta_mode", ["scalar", "channel"])
def test_supernet_output_and_gradient_flow(optimizer, space, beta_mode):
    torch.manual_seed(0)
    net = Supernet("resnet8", space, "grafs", make_relaxation(optimizer), beta_mode)
    net.relaxation.resample(net.cell.alpha_dict())
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters())
    if optimizer != "gdas":  # GDAS only reaches the betas of operators it sampled
        assert all(p.grad is not None for p in net.arch_parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.beta_parameters())
    # One set of alphas for the whole network; betas per site only in channel mode.
    assert len(net.arch_parameters()) == (3 if space == "simple" else 6)
    assert bool(net.cell.betas) == (beta_mode == "scalar")


def test_argmax_genotype_and_discretized_network_keep_weights():
    torch.manual_seed(0)
    net = Supernet("resnet8", "simple", "grafs", Softmax())
    with torch.no_grad():
        for edge, name in (("u1", "identity"), ("u2", "shift"), ("b1", "sigmul")):
            net.cell.alphas[edge][net.cell.candidates[edge].index(name)] = 5.0
        net.cell.betas["u2__shift"].fill_(0.25)
    g = net.genotype()
    assert g == Genotype("simple", ("identity", "shift", "sigmul"), (None, 0.25, None))
    fixed = discretized_network(net, g)
    assert torch.equal(fixed.conv.weight, net.net.conv.weight)
    assert float(fixed.act.beta["u2"].detach()) == 0.25


def tiny_loaders(n=64, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (2 * n,), generator=g)
    train = BatchLoader(images[:n], labels[:n], batch, shuffle=True, augment=True, seed=seed)
    val = BatchLoader(images[n:], labels[n:], batch, shuffle=True, augment=False, seed=seed + 1)
    return train, val


def small_config(**overrides):
    base = dict(optimizer="darts", space="simple", op_set=SMALL_OPS, network="resnet8", epochs=2, batch_size=32,
                device="cpu", seed=0)
    return SearchConfig(**{**base, **overrides})


@pytest.mark.parametrize("optimizer", ["darts", "gdas", "drnas"])
def test_one_search_step_moves_alphas_and_weights_and_val_step_leaks_nothing(optimizer):
    cfg = small_config(optimizer=optimizer)
    torch.manual_seed(0)
    net = build_supernet(cfg)
    architect = Architect(net, lr=0.1, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False)
    train, val = tiny_loaders()
    (x, y), (xv, yv) = next(iter(train)), next(iter(val))
    alphas_before = [a.detach().clone() for a in net.arch_parameters()]
    weights_before = [w.detach().clone() for w in net.weight_parameters()]
    net.relaxation.resample(net.cell.alpha_dict())
    index_before = dict(net.relaxation.index) if optimizer == "gdas" else None
    assert index_before is None or set(index_before) == {"u1", "u2", "b1"}
    assert architect.step(xv, yv) is not None
    assert all(w.grad is None for w in net.weight_parameters())  # the validation batch leaked no gradient
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), alphas_before))
    if optimizer == "gdas":  # the same sample for both steps of the iteration
        assert net.relaxation.index == index_before
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    assert any(not torch.equal(w, b) for w, b in zip(net.weight_parameters(), weights_before))


def test_second_order_darts_step_runs_and_restores_weights():
    cfg = small_config(darts={"second_order": True})
    torch.manual_seed(0)
    net = build_supernet(cfg)
    architect = Architect(net, lr=0.1, betas=(0.5, 0.999), weight_decay=0.0, train_betas=False, second_order=True)
    train, val = tiny_loaders()
    (x, y), (xv, yv) = next(iter(train)), next(iter(val))
    weights_before = [w.detach().clone() for w in net.weight_parameters()]
    alphas_before = [a.detach().clone() for a in net.arch_parameters()]
    assert architect.step(xv, yv, x, y, weight_lr=0.05) is not None
    assert all(torch.equal(w, b) for w, b in zip(net.weight_parameters(), weights_before))
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), alphas_before))


def test_non_finite_steps_are_skipped_and_counted():
    cfg = small_config(epochs=1)
    torch.manual_seed(0)

    class NanLoader:
        def __init__(self, inner):
            self.inner = inner

        def set_epoch(self, e):
            self.inner.set_epoch(e)

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            for x, y in self.inner:
                yield x * float("nan"), y

    nan_train, nan_val = tiny_loaders()
    steps = 2 * len(nan_train)  # every arch step and every weight step is skipped, then the search stops
    with pytest.raises(SearchDiverged, match=f"skipped {steps} of its {steps} steps by epoch 1"):
        run_search(cfg, NanLoader(nan_train), NanLoader(nan_val))


@pytest.mark.parametrize("optimizer", ["darts", "gdas", "drnas"])
def test_search_records_every_epoch(optimizer):
    train, val = tiny_loaders()
    result = run_search(small_config(optimizer=optimizer, space="complex"), train, val)
    assert len(result.history) == 2
    record = result.history[-1]
    for key in ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "operator_weights",
                "entropy", "genotype", "formula", "betas", "temperature", "lr", "skipped_steps"):
        assert key in record, key
    assert set(record["operator_weights"]) == {"u1", "u2", "b1", "u3", "u4", "b2"}
    assert all(abs(sum(w.values()) - 1) < 1e-5 for w in record["operator_weights"].values())
    assert (record["temperature"] is not None) == (optimizer == "gdas")
    assert Genotype.from_dict(record["genotype"]) == result.genotype


def test_search_resumes_from_its_checkpoint_exactly(tmp_path):
    cfg = small_config(optimizer="drnas")  # stochastic: exercises the saved random states
    reference = run_search(cfg, *tiny_loaders())

    class Crash(Exception):
        pass

    def crash_after_first_epoch(record):
        raise Crash

    ckpt = tmp_path / "search.pt"
    with pytest.raises(Crash):
        run_search(cfg, *tiny_loaders(), checkpoint_path=ckpt, on_epoch=crash_after_first_epoch)
    resumed = run_search(cfg, *tiny_loaders(), checkpoint_path=ckpt)
    assert resumed.genotype == reference.genotype
    for a, b in zip(resumed.supernet.state_dict().values(), reference.supernet.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]
    assert strip(resumed.history) == strip(reference.history)


def test_each_epoch_times_its_parts(tmp_path):
    """The parts add up to the epoch (iterations, the two evaluations, the checkpoint; logging after it)."""
    logged = []
    result = run_search(small_config(optimizer="darts"), *tiny_loaders(), checkpoint_path=tmp_path / "ckpt.pt",
                        on_epoch=lambda record: logged.append(math.isnan(record["logging_s"])))
    assert logged == [True] * len(result.history)  # logging is timed after on_epoch has run
    for record in result.history:
        parts = [record[k] for k in ("iterations_s", "val_eval_s", "discretized_eval_s", "checkpoint_s")]
        assert all(p > 0 for p in parts) and record["logging_s"] >= 0
        assert sum(parts) == pytest.approx(record["epoch_time_s"], rel=1e-6)
        assert set(TIMING_KEYS) <= record.keys()


def test_search_config_errors_are_clear():
    with pytest.raises(ValidationError, match=r"optimizer\n.*'darts', 'gdas' or 'drnas'"):
        SearchConfig(optimizer="enas")
    with pytest.raises(ValidationError, match=r"epochs\n.*greater than or equal to 1"):
        SearchConfig(epochs=0)
    with pytest.raises(ValidationError, match="only DARTS has a second-order"):
        SearchConfig(optimizer="gdas", darts={"second_order": True})
    with pytest.raises(ValidationError, match="warmup_epochs = 2 is invalid"):
        SearchConfig(epochs=2, warmup_epochs=2)


# The toy was built with the operators bounded at 20 (now `square_b20`, `mul_b20`). With GRAFS's bound of 10 (x^2
# clipped at |x| = 3.16, each product factor clamped to +-3.16) on these inputs (std 3), DARTS's argmax settles on
# (identity, zero, mul) and never computes Swish within 200 steps (seeds 0-2), while DrNAS still recovers it
# (measured; docs/science.md): the bounds change the toy's landscape, not the optimizer under test, so the toy
# keeps the operators it was made with.
TEACHER_OPS = {"unary": ["identity", "zero", "sin", "square_b20", "tanh"], "binary": ["add", "mul_b20", "sub", "sigmul"]}


def recover_teacher(optimizer: str, seed: int, steps: int):
    """Fit a student cell to a teacher activation (Swish); return the first step at which the argmax genotype
    computes the teacher's function, and the final genotype."""
    torch.manual_seed(seed)
    cell = SearchCell("simple", TEACHER_OPS, make_relaxation(optimizer, seed=seed))
    student = MixedActivation(cell, 1)
    x = torch.randn(512, 1) * 3
    y = SWISH.build()(x)
    opt = torch.optim.Adam(cell.alphas.parameters(), lr=0.01)
    first_hit, genotype = None, None
    for step in range(1, steps + 1):
        with cell.forward_pass():
            loss = F.mse_loss(student(x), y) + cell.relaxation.regularizer(cell.alpha_dict())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            expected = cell.expected_weights()
            genotype = Genotype.with_default_betas(
                "simple", tuple(cell.candidates[e][int(expected[e].argmax())] for e in ("u1", "u2", "b1")))
            if first_hit is None and (genotype.build()(x) - y).abs().max() < 1e-5:
                first_hit = step
    return first_hit, genotype


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_darts_and_drnas_recover_a_teacher_activation(seed):
    darts_hit, _ = recover_teacher("darts", seed, 200)
    # Found within the 200 steps (None if never). Not asserted: that DARTS keeps it. With seed 0 its argmax drifts
    # on to 2*x by step 200 while the mixture still fits Swish: the discretization gap this project measures.
    assert darts_hit is not None
    drnas_hit, drnas_final = recover_teacher("drnas", seed, 600)
    assert drnas_hit is not None and drnas_hit <= 400
    assert drnas_final.formula() == "x*sigmoid(x)"


def test_saved_supernet_loads_back_with_its_config_and_bad_files_are_one_clear_error(tmp_path):
    from pipeline.training.checkpoint import CheckpointError
    from pipeline.search.loop import load_supernet, save_supernet

    cfg = SearchConfig(optimizer="drnas", space="complex", network="resnet8", arch_betas=(0.5, 0.999))
    supernet = build_supernet(cfg)
    with torch.no_grad():
        next(iter(supernet.arch_parameters())).add_(1.0)  # not the initial alphas
    save_supernet(supernet, cfg, tmp_path / "supernet.pt")
    loaded, loaded_cfg = load_supernet(tmp_path / "supernet.pt")
    assert loaded_cfg == cfg  # tuples survive the JSON-like round trip
    assert loaded.genotype() == supernet.genotype()
    for (name, a), (_, b) in zip(supernet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="run the search stage first"):
        load_supernet(tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="delete it and rerun the search stage"):
        load_supernet(tmp_path / "broken.pt")
