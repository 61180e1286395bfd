"""Progressive shrinking: GRAFS's drop schedule, which operator each drop masks, the fused cell built for the
remaining candidates only, and a shrinking search that ends with one operator per edge."""
import dataclasses
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.data.augment import BatchLoader
from pipeline.kernels import fused, fused_ops
from pipeline.kernels.saved import SavedKernel
from pipeline.search.cell import Supernet
from pipeline.search.loop import SearchConfig, run_search
from pipeline.search.fused_site import EAGER_AT_MOST_PER_EDGE
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
    """Spy on the fused cell: (candidates per edge, whole cell compiled, per-operator kernels, host masks) of every
    call, which then runs eagerly (the same math, masks included; a compile would cost seconds)."""
    calls, apply = [], fused._FusedCell.apply

    def spy(spec, plan, compiled, op_kernels, masks, no_grad, *rest):
        calls.append((spec.candidates, compiled, op_kernels, None if masks is None else tuple(
            tuple(m.tolist()) for m in masks)))
        return apply(spec, plan, False, False, masks, no_grad, *rest)
    monkeypatch.setattr(fused._FusedCell, "apply", spy)
    return calls


@pytest.mark.parametrize("optimizer, mode, want", [("darts", "compile", (True, False)),
                                                   ("darts", "eager", (False, False)),
                                                   ("gdas", "compile", (False, True))])
def test_a_compiled_cell_runs_every_candidate_under_the_mask(optimizer, mode, want, monkeypatch):
    """Compiled: the full candidate set, the mask as input; eager: only the remaining candidates; GDAS: its sample."""
    net = small_supernet(optimizer)
    net.cell.drop(2)
    calls = record_kernel_choices(monkeypatch)
    with fused.using(mode), net.cell.forward_pass():
        net.sites()[0](torch.randn(2, 16, 4, 4, dtype=torch.float64))
    ((candidates, compiled, op_kernels, masks),) = calls
    assert (compiled, op_kernels) == want
    edges = list(net.cell.candidates)
    if optimizer == "gdas":
        assert [len(c) for c in candidates] == [1] * len(edges) and masks is None
    elif mode == "compile":
        assert candidates == tuple(net.cell.candidates[e] for e in edges)
        assert masks == tuple(tuple(net.cell.masks()[e]) for e in edges) and masks[0].count(False) == 1
    else:
        assert candidates == tuple(net.cell.active(e) for e in edges) and masks is None


def test_a_fully_shrunk_cell_runs_eagerly_as_the_discretized_network(monkeypatch):
    net = small_supernet("drnas")
    net.cell.drop(sum(len(names) - 1 for names in net.cell.candidates.values()))
    calls = record_kernel_choices(monkeypatch)
    with fused.using("compile"), net.cell.forward_pass():
        net.sites()[0](torch.randn(2, 16, 4, 4, dtype=torch.float64))
    ((candidates, compiled, op_kernels, masks),) = calls
    assert candidates == tuple((net.cell.active(e)[0],) for e in net.cell.candidates)
    assert not compiled and not op_kernels and masks is None


def test_a_cell_shrunk_to_two_candidates_per_edge_runs_the_remaining_ones_eagerly(monkeypatch):
    """At EAGER_AT_MOST_PER_EDGE candidates per edge the eager cell is cheaper than the full kernel; one more
    candidate and the full set runs compiled under its mask."""
    net = small_supernet("drnas")
    edges = list(net.cell.candidates)
    net.cell.drop(sum(len(names) for names in net.cell.candidates.values()) - EAGER_AT_MOST_PER_EDGE * len(edges) - 1)
    calls = record_kernel_choices(monkeypatch)
    with fused.using("compile"), net.cell.forward_pass():
        net.sites()[0](torch.randn(2, 16, 4, 4, dtype=torch.float64))
        net.cell.drop(1)
        net.sites()[0](torch.randn(2, 16, 4, 4, dtype=torch.float64))
    (_, compiled, _, masks), (candidates, compiled_after, op_kernels, masks_after) = calls
    assert compiled and sum(map(sum, masks)) == EAGER_AT_MOST_PER_EDGE * len(edges) + 1
    assert candidates == tuple(net.cell.active(e) for e in edges)
    assert sum(map(len, candidates)) == EAGER_AT_MOST_PER_EDGE * len(edges)
    assert not compiled_after and not op_kernels and masks_after is None


def test_a_shrinking_search_runs_one_candidate_set_under_changing_masks(monkeypatch):
    calls = record_kernel_choices(monkeypatch)
    cfg = SearchConfig(optimizer="darts", space="simple", op_set=OPS, epochs=5, batch_size=16, device="cpu",
                       seed=1, start_shrinking=1, bn_recalibration_batches=1)
    with fused.using("compile"):
        result = run_search(cfg, *loaders(count=32))
    drops = drops_per_epoch(5, 1, 2 * 5 + 3, 3)
    assert [len(r["dropped"]) for r in result.history] == drops
    supernet_calls = [c for c in calls if c[3] is not None]
    # Every supernet call with more than one candidate somewhere: the full set, compiled, under the epoch's mask.
    assert {(c[0], c[1]) for c in supernet_calls} == {((tuple(OPS["unary"]),) * 2 + (tuple(OPS["binary"]),), True)}
    seen = {c[3] for c in supernet_calls}
    epoch_masks = {tuple(tuple(r["mask"][e].values()) for e in r["mask"]) for r in result.history}
    # Sets of at most 2 candidates per edge (6 here: 5, 4 and the last, 3) run eagerly, the larger ones (13, 8)
    # compiled under their masks.
    small = {m for m in epoch_masks if sum(map(sum, m)) <= EAGER_AT_MOST_PER_EDGE * 3}
    assert sorted(sum(map(sum, m)) for m in small) == [3, 4, 5]
    assert epoch_masks - small <= seen and not small & seen
    assert len(epoch_masks) == len({sum(drops[:e + 1]) for e in range(5)})


BETA_OPS = {"unary": ["identity", "relu", "sigmoid", "scale", "tanh"], "binary": ["add", "mul", "interp"]}


def cell_step(net, site, x, mode):
    """The site's output and every gradient (x, alphas, betas) of a fixed weighted sum of it, in `mode`."""
    net.zero_grad(set_to_none=True)
    x.grad = None
    with fused.using(mode), net.cell.forward_pass():
        out = site(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()
             if "alphas" in n or "betas" in n}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.slow
def test_one_compiled_kernel_serves_every_candidate_set_and_leaves_dropped_operators_out(monkeypatch, caplog):
    """Compiled once for the full set: a drop recompiles nothing, and a dropped operator whose value and derivatives
    are NaN changes no output or gradient (a weight of 0 would not do: 0 * NaN); a dropped beta gets no gradient.
    Values and gradients equal the eager cell's, which computes only the remaining operators."""
    torch.manual_seed(0)
    net = Supernet("resnet8", "simple", BETA_OPS, make_relaxation("darts", seed=0)).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0.0, 1.0)
        for edge in ("u1", "u2"):  # the lowest on the edges that read x: relu, then scale (a beta operator)
            net.cell.alphas[edge][BETA_OPS["unary"].index("relu")] = -6.0
            net.cell.alphas[edge][BETA_OPS["unary"].index("scale")] = -5.0
    for name in ("relu", "scale"):  # poisoned before compiling: the kernel's code is then the same throughout
        op = fused_ops.UNARY_GRADS[name]
        nan = lambda t, b: torch.full_like(t.x, math.nan)  # noqa: E731
        monkeypatch.setitem(fused_ops.UNARY_GRADS, name, dataclasses.replace(
            op, value=nan, dx=nan, **({"dbeta": nan} if name == "scale" else {})))
    monkeypatch.setattr(fused, "_KERNELS", {})
    site = net.sites()[1]
    x = torch.randn(64, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    with caplog.at_level(logging.WARNING):
        poisoned = cell_step(net, site, x, "compile")  # compiles the forward and backward kernels of the full set
    assert torch.isnan(poisoned[0]).all()  # with relu and scale in, the poison shows
    compiled = SavedKernel.compiled
    assert dict(net.cell.drop(4)) == {"u1": "scale", "u2": "scale"}  # relu, then scale, on u1 and u2
    with caplog.at_level(logging.WARNING):
        got = cell_step(net, site, x, "compile")
    assert "failed" not in caplog.text  # compiled, not the eager fallback
    assert SavedKernel.compiled == compiled  # the drop recompiled nothing
    assert {static[0].candidates[:2] for kind, static in fused._KERNELS} == {(tuple(BETA_OPS["unary"]),) * 2}
    want = cell_step(net, site, x, "eager")  # only the remaining operators: the poison is never called
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert torch.allclose(got[0], want[0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(got[1], want[1], rtol=1e-10, atol=1e-12)
    assert got[2].keys() == want[2].keys()
    for name, g in got[2].items():
        if want[2][name] is None:
            assert g is None, name  # a dropped candidate's beta: no gradient, as in the eager cell
        else:
            assert torch.allclose(g, want[2][name], rtol=1e-9, atol=1e-12), name
    assert got[2]["cell.betas.u1__scale"] is None and got[2]["cell.betas.b1__interp"] is not None
