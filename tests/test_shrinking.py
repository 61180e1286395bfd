"""Progressive shrinking: GRAFS's drop schedule, which operator each drop masks, the fused cell built for the
remaining candidates only, and a shrinking search that ends with one operator per edge."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.data.augment import BatchLoader
from pipeline.kernels import fused
from pipeline.search.cell import Supernet
from pipeline.search.loop import SearchConfig, run_search
from pipeline.search.relax import make_relaxation
from pipeline.search.shrink import choose_drops, drops_per_epoch, remaining_fraction
from pipeline.space.ops import BINARY, UNARY
from tests.test_fused import count_unary_calls
from tests.train_subprocess_script import colour_task

OPS = {"unary": ["identity", "zero", "relu", "sigmoid", "tanh"], "binary": ["add", "mul", "sigmul"]}

# GRAFS (rn/search_arch.py): 2 - 1 + numpy.logspace(log10(1), log10(50 - 2), 110 - 6).astype(int), the drops
# counted per epoch, as printed by running that expression.
GRAFS_DROPS = {2: 19, 3: 11, 4: 7, 5: 6, 6: 5, 7: 4, 8: 4, 9: 3, 10: 3, 11: 2, 12: 3, 13: 2, 14: 2, 15: 2, 16: 1,
               17: 2, 18: 1, 19: 2, 20: 1, 21: 2, 22: 1, 23: 1, 24: 1, 25: 1, 26: 1, 27: 1, 28: 1, 29: 1, 30: 1,
               31: 1, 32: 1, 33: 1, 35: 1, 36: 1, 37: 1, 39: 1, 40: 1, 42: 1, 43: 1, 45: 1, 47: 1, 48: 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_grafs_schedule_for_its_110_candidate_cell_in_50_epochs():
    counts = drops_per_epoch(50, 2, candidates=4 * 23 + 2 * 9, edges=6)
    assert sum(counts) == 104
    assert {epoch: n for epoch, n in enumerate(counts) if n} == GRAFS_DROPS


def test_schedule_edge_cases():
    assert drops_per_epoch(5, None, 10, 2) == [0] * 5  # off
    assert drops_per_epoch(5, 4, 10, 2) == [0, 0, 0, 0, 8]  # one epoch left: every drop at once
    assert drops_per_epoch(4, 0, 4, 2) == [1, 0, 0, 1]  # geometric 1, 4 -> epochs -1 + 1, -1 + 4
    with pytest.raises(ValueError, match="start_shrinking"):
        drops_per_epoch(5, 5, 10, 2)
    assert drops_per_epoch(3, 1, 3, 2) == [0, 1, 0]  # a single drop: logspace of one term is 1 -> epoch start
    assert drops_per_epoch(3, 1, 2, 2) == [0, 0, 0]  # one candidate per edge: nothing to drop
    assert all(isinstance(n, int) for n in drops_per_epoch(50, 2, 110, 6))


def test_remaining_fraction_counts_droppable_candidates_only():
    assert remaining_fraction({"u1": [True], "b1": [True]}) == 1.0  # nothing droppable: nothing was dropped
    assert remaining_fraction({"u1": [True, True], "b1": [True]}) == 1.0  # one droppable, still there
    assert remaining_fraction({"u1": [False, True], "b1": [True]}) == 0.0  # ... and dropped
    assert remaining_fraction({"u1": torch.tensor([True, False, True]), "b1": [True, True]}) == pytest.approx(2 / 3)


def test_a_drop_from_single_operator_edges_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="^cannot drop an operator: every edge has a single one left$"):
        choose_drops({"u1": [0.5, 0.5]}, {"u1": [True, False]}, 1)


def test_each_drop_takes_the_lowest_weight_on_the_edge_with_most_left():
    weights = {"a": [0.5, 0.1, 0.4], "b": [0.3, 0.7], "c": [9.0, 0.0, 0.2]}
    masks = {"a": [True, True, True], "b": [True, True], "c": [True, False, True]}
    # a has 3 (drop 0.1); then a, b and c have 2 each: a first (0.4 < 0.5); then b (0.3); then c (0.2; its 0.0
    # is already dropped); then one each is left.
    assert choose_drops(weights, masks, 4) == [("a", 1), ("a", 2), ("b", 0), ("c", 2)]
    assert masks["a"] == [True, True, True]  # the caller's masks are not changed
    with pytest.raises(ValueError, match="single one left"):
        choose_drops(weights, masks, 5)
    assert remaining_fraction({"a": [True, False, False], "b": [True, True]}) == pytest.approx(1 / 3)


def small_supernet(optimizer="darts", space="simple"):
    torch.manual_seed(0)
    net = Supernet("resnet8", space, OPS, make_relaxation(optimizer, seed=0)).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0.0, 1.0)
    return net


def test_cell_drops_by_operator_weight_and_renormalises():
    net = small_supernet()
    cell = net.cell
    alphas = {edge: a.detach().clone() for edge, a in cell.alphas.items()}
    dropped = cell.drop(3)  # u1 and u2 have 5 candidates, b1 has 3: u1, u2, then u1 again
    lowest = {edge: a.argsort().tolist() for edge, a in alphas.items()}
    assert dropped == [("u1", OPS["unary"][lowest["u1"][0]]), ("u2", OPS["unary"][lowest["u2"][0]]),
                       ("u1", OPS["unary"][lowest["u1"][1]])]
    kept = [OPS["unary"][k] for k in sorted(lowest["u1"][2:])]
    assert cell.active("u1") == tuple(kept)
    want = F.softmax(alphas["u1"][sorted(lowest["u1"][2:])], dim=0)
    assert torch.allclose(cell.expected_weights()["u1"], want)
    weights = net.operator_weights()["u1"]
    assert [weights[OPS["unary"][k]] for k in lowest["u1"][:2]] == [0.0, 0.0]
    assert net.genotype().ops[0] == OPS["unary"][lowest["u1"][-1]]


@pytest.mark.parametrize("mode", ["eager", "off"])
def test_dropped_operators_are_not_computed_and_the_site_matches_a_hand_computation(mode, monkeypatch):
    net = small_supernet()
    with torch.no_grad():  # relu the lowest on both edges that read x: a dropped operator, computed for neither
        for edge in ("u1", "u2"):
            net.cell.alphas[edge][OPS["unary"].index("relu")] = -5.0
    dropped = dict(net.cell.drop(2))
    assert dropped == {"u1": "relu", "u2": "relu"}
    specs, calls = [], count_unary_calls(monkeypatch, "value")
    apply = fused._FusedCell.apply
    monkeypatch.setattr(fused._FusedCell, "apply", lambda spec, *rest: specs.append(spec) or apply(spec, *rest))
    if mode == "off":  # the plain cell calls Op.fn: count those instead
        calls.clear()
        for name in OPS["unary"]:
            op = UNARY[name]
            monkeypatch.setitem(UNARY, name, dataclasses.replace(op, fn=(
                lambda fn, n: lambda *args: calls.append(n) or fn(*args))(op.fn, name)))
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    site = net.sites()[1]
    with fused.using(mode), net.cell.forward_pass():
        got = site(x)
    assert set(calls) == set(OPS["unary"]) - set(dropped.values())
    if mode == "eager":
        (spec,) = specs
        assert spec.candidates[0] == net.cell.active("u1") and spec.candidates[1] == net.cell.active("u2")
        assert dropped["u1"] not in spec.candidates[0] and len(spec.candidates[0]) == 4
    # By hand: softmax over the remaining alphas, each edge a weighted sum of the remaining operators.
    edges = {}
    for edge in ("u1", "u2"):
        keep = [k for k, name in enumerate(OPS["unary"]) if name != dropped[edge]]
        w = F.softmax(net.cell.alphas[edge].detach()[keep], dim=0)
        edges[edge] = sum(w[i] * UNARY[OPS["unary"][k]].fn(x, None) for i, k in enumerate(keep))
    wb = F.softmax(net.cell.alphas["b1"].detach(), dim=0)
    want = sum(wb[i] * BINARY[name].fn(edges["u1"], edges["u2"], None) for i, name in enumerate(OPS["binary"]))
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def loaders(count=64, batch=16):
    return [BatchLoader(*colour_task(count, seed=s), batch, shuffle=True, augment=False, seed=s) for s in (1, 2)]


def test_a_shrinking_search_ends_with_one_operator_per_edge():
    cfg = SearchConfig(optimizer="drnas", space="complex", op_set=OPS, epochs=4, batch_size=16, device="cpu",
                       seed=1, start_shrinking=1, bn_recalibration_batches=2)
    result = run_search(cfg, *loaders())
    counts = drops_per_epoch(4, 1, 4 * 5 + 2 * 3, 6)
    history = result.history
    assert [len(r["dropped"]) for r in history] == counts
    assert [r["remaining_fraction"] for r in history] == pytest.approx(
        [1 - sum(counts[:e + 1]) / 20 for e in range(4)])
    assert history[-1]["remaining"] == {edge: 1 for edge in history[-1]["remaining"]}
    last_mask = history[-1]["mask"]
    assert tuple(next(n for n, kept in last_mask[e].items() if kept) for e in last_mask) == result.genotype.ops
    # Once shrunk, the supernet is the discretized network: same function, same BatchNorm after recalibration.
    assert all(len(result.supernet.cell.active(e)) == 1 for e in last_mask)


def record_kernel_choices(monkeypatch) -> list:
    """Spy on the fused cell: (candidates per edge, whole cell compiled, per-operator kernels) of every call, which
    then runs eagerly (the same math; a compile would cost seconds per candidate set)."""
    calls, apply = [], fused._FusedCell.apply

    def spy(spec, plan, compiled, op_kernels, *rest):
        calls.append((spec.candidates, compiled, op_kernels))
        return apply(spec, plan, False, False, *rest)
    monkeypatch.setattr(fused._FusedCell, "apply", spy)
    return calls


FULL = ("identity", "zero", "relu", "sigmoid", "tanh")


@pytest.mark.parametrize("optimizer, changing, drops, threshold, want", [
    ("darts", False, 2, 0.15, ((True, False), "active")),  # no shrinking: the set's own compiled kernel
    ("darts", True, 0, 0.15, ((True, False), "full")),  # shrinking, nothing dropped yet
    ("darts", True, 2, 0.15, ((True, False), "full")),  # 11 of 13 left: the full kernel, dropped ones weighted 0
    ("darts", True, 2, 0.9, ((False, False), "active")),  # fewer left than the threshold: eager, remaining only
    ("gdas", True, 2, 0.15, ((False, True), "active")),  # GDAS: per-operator kernels of the sampled operator
])
def test_kernel_choice_by_optimizer_shrinking_and_share_left(optimizer, changing, drops, threshold, want,
                                                             monkeypatch):
    net = small_supernet(optimizer)
    net.cell.candidates_changing = changing
    net.cell.drop(drops)
    monkeypatch.setattr(fused, "FULL_KERNEL_ABOVE_SHARE", threshold)
    calls = record_kernel_choices(monkeypatch)
    with fused.using("compile"), net.cell.forward_pass():
        net.sites()[0](torch.randn(2, 16, 4, 4, dtype=torch.float64))
    (candidates, compiled, op_kernels), = calls
    assert (compiled, op_kernels) == want[0]
    if optimizer == "gdas":
        assert all(len(names) == 1 for names in candidates)
    elif want[1] == "full":
        assert candidates[0] == FULL and candidates[2] == tuple(OPS["binary"])
    else:
        assert candidates == tuple(net.cell.active(edge) for edge in ("u1", "u2", "b1"))
        assert sum(map(len, candidates)) == 13 - drops


def test_the_full_kernel_of_a_shrunk_cell_computes_the_remaining_candidates_cell(monkeypatch):
    """The full candidate set with the dropped candidates weighted 0 gives the value and the gradients (x, alphas,
    betas) of the cell of the remaining candidates; the dropped candidates' alphas get no gradient. Catches a
    weight scattered to the wrong candidate or a dropped candidate that still counts."""
    net = small_supernet("darts")
    net.cell.candidates_changing = True
    with torch.no_grad():
        for alpha in net.cell.alphas.values():
            alpha.copy_(torch.linspace(-1.0, 1.0, len(alpha)) ** 3)
    dropped = net.cell.drop(3)
    assert {edge for edge, _ in dropped} >= {"u1"}
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = list(net.cell.alphas.values()) + list(net.cell.betas.values())

    def value_and_grads(mode):
        xr = x.clone().requires_grad_()
        with fused.using(mode), net.cell.forward_pass():
            out = net.sites()[0](xr)
        grads = torch.autograd.grad((out * torch.cos(x)).sum(), [xr] + params, allow_unused=True)
        return out.detach(), grads

    calls = record_kernel_choices(monkeypatch)  # "compile" takes the full-kernel path (run eagerly by the spy)
    full_out, full_grads = value_and_grads("compile")
    assert calls[0][0][0] == FULL and calls[0][1]
    calls.clear()
    out, grads = value_and_grads("eager")
    assert len(calls[0][0][0]) < len(FULL) and not calls[0][1]
    assert torch.allclose(full_out, out, rtol=1e-12, atol=1e-12)
    for got, want in zip(full_grads, grads):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    for edge, name in dropped:
        k = net.cell.candidates[edge].index(name)
        assert full_grads[1 + list(net.cell.alphas).index(edge)][k] == 0.0


def test_a_shrinking_search_compiles_one_kernel_for_all_its_large_candidate_sets(monkeypatch):
    """While more than FULL_KERNEL_ABOVE_SHARE of the candidates is left, every call of a shrinking search uses the
    compiled kernel of the full candidate set; below it, the eager cell of the remaining candidates."""
    monkeypatch.setattr(fused, "FULL_KERNEL_ABOVE_SHARE", 0.5)
    calls = record_kernel_choices(monkeypatch)
    cfg = SearchConfig(optimizer="darts", space="simple", op_set=OPS, epochs=3, batch_size=16, device="cpu",
                       seed=1, start_shrinking=1, bn_recalibration_batches=1)
    with fused.using("compile"):
        result = run_search(cfg, *loaders(count=32))
    counts = drops_per_epoch(3, 1, 2 * 5 + 3, 3)
    assert [len(r["dropped"]) for r in result.history] == counts and counts[-1] > 0  # the last epoch drops too
    assert result.supernet.cell.candidates_changing
    searched = [(candidates, compiled) for candidates, compiled, _ in calls if max(map(len, candidates)) > 1]
    compiled_sets = {candidates for candidates, compiled in searched if compiled}
    assert compiled_sets == {(FULL, FULL, tuple(OPS["binary"]))}
    eager_sets = {candidates for candidates, compiled in searched if not compiled}
    assert eager_sets and all(sum(map(len, c)) / 13 <= 0.5 for c in eager_sets)
    # Without shrinking, the same search compiles its whole cell.
    calls.clear()
    with fused.using("compile"):
        run_search(cfg.model_copy(update={"start_shrinking": None}), *loaders(count=32))
    assert all(compiled for candidates, compiled, _ in calls if max(map(len, candidates)) > 1)
