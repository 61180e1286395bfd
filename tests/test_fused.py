"""The fused cell (pipeline/kernels/fused.py) against the plain autograd cell: values and gradients for inputs, weights and
betas; every operator; DARTS, GDAS, DrNAS; both spaces; scalar and per-channel betas; float64 (tight) and float32;
what it saves for backward; genotypes dispatched to built-in functions."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.kernels import fast_math, fused, fused_ops
from pipeline.kernels.fused_kernels import edge_kernel
from pipeline.search.cell import Supernet
from pipeline.kernels.fused_genotype import fast_forward, native_function, shifted_relu
from pipeline.space.genotype import RELU, SWISH, Genotype, GenotypeActivation
from pipeline.space.ops import BINARY, UNARY
from pipeline.search.relax import make_relaxation

TIGHT = dict(rtol=1e-9, atol=1e-10)
FLOAT32 = dict(rtol=1e-4, atol=2e-5)


@pytest.fixture(params=["native", "compiled"])
def formulas(request, monkeypatch):
    """Kernels use one-pass native functions eagerly and shared-exp / fast_math formulas when compiled; both sets
    are plain torch, so the compiled set is tested here eagerly, without paying for a compile."""
    monkeypatch.setattr(fused_ops, "_compiled", lambda: request.param == "compiled")
    return request.param


def inputs(dtype=torch.float64, shape=(3, 4, 5, 5), scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_(True)


def grads(y, tensors, seed=1):
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return torch.autograd.grad(y, tensors, g, allow_unused=True)


def assert_same(got, want, tol, what):
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any()), (what, i)
            continue
        assert torch.allclose(a, b, **tol), (what, i, (a - b).abs().max().item())


def check_single_op(build_plain, build_fused, params64):
    """float64: fused == plain tightly. float32: the fused result is as close to the float64 truth as the plain
    float32 result is (some derivatives, e.g. of x / tanh(x) near 0, are ill-conditioned in float32)."""
    plain64, fused64 = build_plain(params64), build_fused(params64)
    want_grads = grads(plain64, params64)
    assert torch.allclose(fused64, plain64, **TIGHT), (fused64 - plain64).abs().max()
    assert_same(grads(fused64, params64), want_grads, TIGHT, "float64")
    params32 = [p.detach().float().requires_grad_(True) for p in params64]
    plain32, fused32 = build_plain(params32), build_fused(params32)
    for got, ref, want in zip([fused32, *grads(fused32, params32)], [plain32, *grads(plain32, params32)],
                              [plain64, *want_grads]):
        if want is None:
            continue
        bound = 4 * (ref.double() - want).abs() + FLOAT32["atol"] + FLOAT32["rtol"] * want.abs()
        assert ((got.double() - want).abs() <= bound).all(), ((got.double() - want).abs() - bound).max()


@pytest.mark.parametrize("name", sorted(UNARY))
def test_every_unary_operator_value_and_gradients(name, formulas):
    op = UNARY[name]
    params = [inputs(), torch.tensor([0.8], dtype=torch.float64, requires_grad=True)]
    params += [torch.tensor(0.7, dtype=torch.float64, requires_grad=True)] if op.has_beta else []

    def plain(p):
        return p[1][0] * op.fn(p[0], p[2] if op.has_beta else None)

    def fast(p):
        beta = p[2] if op.has_beta else None
        return fused.fused_cell("simple", [(name,), ("zero",), ("left",)], [p[1], None, None],
                                [[beta], [None], [None]], p[0], compile_as="operator")

    check_single_op(plain, fast, params)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_every_binary_operator_value_and_gradients(name, formulas):
    # b1(x, tanh(x)): two different inputs, and the gradient reaches x through both.
    op = BINARY[name]
    params = [inputs(), torch.tensor([1.3], dtype=torch.float64, requires_grad=True)]
    params += [torch.tensor(0.6, dtype=torch.float64, requires_grad=True)] if op.has_beta else []

    def plain(p):
        return p[1][0] * op.fn(p[0], torch.tanh(p[0]), p[2] if op.has_beta else None)

    def fast(p):
        beta = p[2] if op.has_beta else None
        return fused.fused_cell("simple", [("identity",), ("tanh",), (name,)], [None, None, p[1]],
                                [[None], [None], [beta]], p[0], compile_as="operator")

    check_single_op(plain, fast, params)


def supernet(optimizer, space, beta_mode, dtype=torch.float64, op_set="grafs"):
    torch.manual_seed(0)
    net = Supernet("resnet8", space, op_set, make_relaxation(optimizer, seed=0), beta_mode).to(dtype)
    with torch.no_grad():  # away from the initial point, where every alpha and beta is nearly equal
        for p in net.arch_parameters():
            p.normal_(0.0, 1.0)
        for p in net.beta_parameters():
            p.add_(0.3 * torch.randn_like(p))
    net.relaxation.resample(net.cell.alpha_dict())
    return net


def site_output(net, site, x, mode):
    with fused.using(mode):
        torch.manual_seed(5)  # DrNAS draws its Dirichlet sample inside forward_pass
        with net.cell.forward_pass():
            return site(x)


@pytest.mark.parametrize("beta_mode", ["scalar", "channel"])
@pytest.mark.parametrize("space", ["simple", "complex"])
@pytest.mark.parametrize("optimizer", ["darts", "gdas", "drnas"])
def test_supernet_site_matches_the_plain_cell(optimizer, space, beta_mode, formulas):
    """Values and gradients for x, alphas and betas (the arch step's and the weight step's) in float64."""
    net = supernet(optimizer, space, beta_mode)
    site = net.sites()[1]  # 16 channels
    params = [*net.arch_parameters(), *net.beta_parameters()]
    x = inputs(shape=(2, 16, 4, 4))
    want = site_output(net, site, x, "off")
    got = site_output(net, site, x, "eager")
    assert torch.allclose(got, want, **TIGHT)
    assert_same(grads(got, [x, *params]), grads(want, [x, *params]), TIGHT, (optimizer, space, beta_mode))


@pytest.mark.parametrize("space", ["simple", "complex"])
def test_weight_step_gradients_match_in_float32(space, formulas):
    """The weight step (alphas frozen: the kernels skip the weight gradients) in float32."""
    net = supernet("darts", space, "scalar", torch.float32)
    for p in net.arch_parameters():
        p.requires_grad_(False)
    site = net.sites()[1]
    x = inputs(torch.float32, shape=(4, 16, 4, 4))
    want, got = site_output(net, site, x, "off"), site_output(net, site, x, "eager")
    assert torch.allclose(got, want, **FLOAT32)
    params = [x, *net.beta_parameters()]
    assert_same(grads(got, params), grads(want, params), dict(rtol=1e-3, atol=1e-4), space)


def test_whole_supernet_loss_and_gradients_match():
    net = supernet("darts", "simple", "channel")
    x, y = inputs(shape=(2, 3, 32, 32), scale=1.0), torch.tensor([3, 7])
    params = list(net.parameters())
    results = []
    for mode in ("off", "eager"):
        with fused.using(mode):
            loss = F.cross_entropy(net(x), y)
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    assert torch.allclose(results[0][0], results[1][0], **TIGHT)
    assert_same(results[1][1], results[0][1], dict(rtol=1e-7, atol=1e-9), "supernet")


def test_extreme_inputs_give_finite_values_and_gradients(formulas):
    net = supernet("darts", "complex", "scalar")
    site = net.sites()[1]
    x = torch.linspace(-1e4, 1e4, 2 * 16 * 4 * 4, dtype=torch.float64).reshape(2, 16, 4, 4).requires_grad_(True)
    y = site_output(net, site, x, "eager")
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads(y, [x, *net.arch_parameters(), *net.beta_parameters()])
               if g is not None)


def test_saves_a_few_tensors_not_every_candidate():
    """Memory: what autograd keeps for backward, counted in tensors the size of x (saved-tensor hooks)."""
    net = supernet("darts", "simple", "scalar", torch.float32)
    for p in net.arch_parameters():
        p.requires_grad_(False)
    site, x = net.sites()[1], inputs(torch.float32, shape=(2, 16, 4, 4))

    def saved_full_tensors(mode):
        kept = []

        def pack(t):
            if t.numel() >= x.numel():
                kept.append(t.data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            site_output(net, site, x, mode)
        return len(set(kept))

    plain, fast = saved_full_tensors("off"), saved_full_tensors("eager")
    assert fast <= 5  # x, d out/dx, the binary edge's two partials and u1 - u2 (interp's d/d beta)
    assert plain >= 4 * fast


@pytest.mark.parametrize("beta_mode", ["scalar", "channel"])
@pytest.mark.parametrize("space", ["simple", "complex"])
def test_gdas_per_operator_kernels_match_the_plain_cell(space, beta_mode, monkeypatch, formulas):
    """The path GDAS takes when compiling: the cell eagerly, each drawn operator through `edge_kernel` (run
    uncompiled here, so the orchestration is tested in seconds; the slow test compiles it)."""

    monkeypatch.setattr(fused, "_op_kernel", lambda *static: lambda *tensors: edge_kernel(*static, *tensors))
    net = supernet("gdas", space, beta_mode)
    site, params = net.sites()[1], [*net.arch_parameters(), *net.beta_parameters()]
    for _ in range(3):  # three samples, beta-carrying operators included with good odds
        net.relaxation.resample(net.cell.alpha_dict())
        x = inputs(shape=(2, 16, 4, 4))
        want, got = site_output(net, site, x, "off"), site_output(net, site, x, "compile")
        assert torch.allclose(got, want, **TIGHT)
        assert_same(grads(got, [x, *params]), grads(want, [x, *params]), TIGHT, (space, beta_mode))


def count_unary_calls(monkeypatch, field: str) -> list:
    """Wrap every unary operator's `field` (value or dx) so that each call appends the operator's name."""
    calls = []
    for name, grad in list(fused_ops.UNARY_GRADS.items()):
        counted = (lambda fn, n: lambda *args: calls.append(n) or fn(*args))(getattr(grad, field), name)
        monkeypatch.setitem(fused_ops.UNARY_GRADS, name, dataclasses.replace(grad, **{field: counted}))
    return calls


def test_evaluation_computes_no_derivatives(monkeypatch):
    calls = count_unary_calls(monkeypatch, "dx")
    net = supernet("darts", "simple", "scalar", torch.float32)
    x = inputs(torch.float32, shape=(2, 16, 4, 4))
    with torch.no_grad():
        site_output(net, net.sites()[1], x, "eager")
    assert calls == []
    site_output(net, net.sites()[1], x, "eager")
    # With gradients: each derivative once for x, which u1 and u2 share; those with a beta once per edge.
    names = net.cell.candidates["u1"]
    assert len(calls) == len(names) + sum(UNARY[n].has_beta for n in names)


def test_gdas_computes_only_the_sampled_operators(monkeypatch):
    calls = count_unary_calls(monkeypatch, "value")
    net = supernet("gdas", "simple", "scalar", torch.float32)
    site_output(net, net.sites()[1], inputs(torch.float32, shape=(2, 16, 4, 4)), "eager")
    names = net.cell.candidates
    assert sorted(calls) == sorted(names[e][net.relaxation.index[e]] for e in ("u1", "u2"))


@pytest.mark.parametrize("beta_mode", ["scalar", "channel"])
@pytest.mark.parametrize("genotype", [
    Genotype("simple", ("relu", "const", "add"), (None, 0.1, None)),
    Genotype("simple", ("scale", "shift", "interp"), (0.7, -0.2, 0.4)),
    Genotype("complex", ("tanh", "sigmoid", "mul", "asinh", "gelu", "max"), (None,) * 6),
    Genotype("complex", ("scale", "erf", "sigmul", "shift", "softplus", "gauss_sq"), (1.2, None, None, 0.3, None, 0.8)),
], ids=str)
def test_genotype_activation_matches_the_plain_cell(genotype, beta_mode, formulas):
    act = genotype.build(4, beta_mode, kernel=fast_forward).double()
    with torch.no_grad():
        for p in act.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = inputs(shape=(3, 4, 5, 5))
    results = []
    for mode in ("off", "eager"):
        with fused.using(mode):
            y = act(x)
        results.append((y, grads(y, [x, *act.parameters()])))
    assert torch.allclose(results[1][0], results[0][0], **TIGHT)
    assert_same(results[1][1], results[0][1], TIGHT, str(genotype))


def test_genotypes_equal_to_a_builtin_run_as_the_builtin():
    assert native_function(RELU) is UNARY["relu"].fn
    assert native_function(SWISH) is UNARY["silu"].fn  # sigmul(identity, identity) = x * sigmoid(x)
    assert native_function(Genotype("complex", ("identity", "zero", "left", "tanh", "gelu", "right"),
                                          (None,) * 6)) is UNARY["gelu"].fn
    assert native_function(Genotype("simple", ("relu", "const", "add"), (None, 0.0, None))) is None
    x = inputs()
    with fused.using("eager"):
        assert torch.equal(RELU.build(kernel=fast_forward)(x), F.relu(x))
        assert torch.allclose(SWISH.build(kernel=fast_forward)(x), x * torch.sigmoid(x), **TIGHT)


@pytest.mark.parametrize("mode", ["off", "eager", "compile"])
def test_a_relu_in_disguise_keeps_its_own_gradient_at_the_ties_of_its_max(mode):
    # max(gelu(x), relu(x)) is relu(x) in value (the reference run found it, docs/results.md), but a tie of the max
    # splits the gradient between its arguments: at x = 0 it passes gelu'(0) / 2 = 1/4 where ReLU passes 0, and
    # at x = -10, where float32's erf rounds to -1 so that gelu(x) = -0, it passes gelu'(-10) / 2. The retraining
    # path (fast_forward, every mode) must keep that rule, which is what its 0.2-1.4 point difference rests on.
    disguise = Genotype("simple", ("gelu", "relu", "max"), (None,) * 3).build(kernel=fast_forward)
    x = torch.tensor([0.0, -10.0, -1.0, 1.0, 2.0, 0.3]).reshape(1, 6, 1, 1).requires_grad_()
    with fused.using(mode):
        y = disguise(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y.detach(), F.relu(x.detach()))
    gelu_grad_minus_10 = 0.5 * math.erfc(10 / math.sqrt(2)) - 10 * math.exp(-50) / math.sqrt(2 * math.pi)  # Φ + xφ
    assert grad.flatten()[0].item() == 0.25
    assert grad.flatten()[1].item() == pytest.approx(gelu_grad_minus_10 / 2, rel=1e-3)
    assert grad.flatten()[2:].tolist() == [0.0, 1.0, 1.0, 1.0]  # no tie: the larger argument's gradient


SHIFTED_RELUS = {  # genotype -> what shifted_relu reads off it
    Genotype("simple", ("relu", "const", "add"), (None, 0.3, None)): ("relu", 1.0, 1.0, "u2"),
    Genotype("simple", ("const", "relu", "sub"), (0.3, None, None)): ("relu", -1.0, 1.0, "u1"),
    Genotype("simple", ("min0", "const", "sub"), (None, -0.2, None)): ("min0", 1.0, -1.0, "u2"),
    Genotype("simple", ("const", "min0", "sub"), (0.1, None, None)): ("min0", -1.0, 1.0, "u1"),
    Genotype("complex", ("relu", "identity", "left", "shift", "identity", "left"), (None, None, None, 0.5, None, None)):
        ("relu", 1.0, 1.0, "u3"),
}


def test_shifted_relus_are_recognised_and_nothing_else():
    for genotype, expected in SHIFTED_RELUS.items():
        assert shifted_relu(genotype) == expected, genotype
    for ops, betas in ((("relu", "const", "mul"), (None, 0.3, None)),  # a scaled ReLU
                       (("relu", "shift", "add"), (None, 0.3, None)),  # relu(x) + x + beta
                       (("tanh", "const", "add"), (None, 0.3, None)),
                       (("relu", "zero", "left"), (None, None, None))):  # plain ReLU: the built-in
        assert shifted_relu(Genotype("simple", ops, betas)) is None, ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta_mode", ["scalar", "channel"])
def test_shifted_relus_match_the_plain_cell_and_save_only_their_output(beta_mode, dtype):
    for genotype in SHIFTED_RELUS:
        act = GenotypeActivation(genotype, 4, beta_mode, kernel=fast_forward)
        x = inputs(dtype=dtype, shape=(3, 4, 5, 5))
        results = []
        for mode in ("off", "eager"):
            with fused.using(mode):
                saved = []
                with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
                    y = act(x)
                results.append((y, grads(y, [x, *act.parameters()]), saved))
        assert torch.equal(results[1][0], results[0][0]), genotype
        assert_same(results[1][1], results[0][1], TIGHT, str(genotype))
        output, beta = results[1][2]  # the output (the next layer's input anyway) and beta, nothing else
        assert output is results[1][0] and beta is act.beta[shifted_relu(genotype)[3]]


def test_shifted_relu_under_bfloat16_runs_the_fused_cell():
    genotype = next(iter(SHIFTED_RELUS))
    act = GenotypeActivation(genotype, 4, kernel=fast_forward)
    x = inputs(shape=(3, 4, 5, 5)).to(torch.bfloat16)
    with fused.using("eager"):
        y = act(x)
    assert y.dtype == torch.bfloat16 and y.grad_fn.name().endswith("_FusedCellBackward")
    assert torch.allclose(y.float(), F.relu(x.float()) + 0.3, rtol=1e-2, atol=1e-2)  # bf16 rounding


def test_channels_last_and_bfloat16_inputs():
    net = supernet("darts", "simple", "channel", torch.float32)
    site = net.sites()[1]
    x = inputs(torch.float32, shape=(2, 16, 4, 4))
    want = site_output(net, site, x, "off")
    x_last = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    got = site_output(net, site, x_last, "eager")
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, want, **FLOAT32)
    params = [*net.arch_parameters(), *net.beta_parameters()]
    assert_same(grads(got, [x_last, *params]), grads(want, [x, *params]), dict(rtol=1e-3, atol=1e-4), "nhwc")
    low = site_output(net, site, x.detach().bfloat16(), "eager")  # computed in float32, returned in bf16
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), want, rtol=2e-2, atol=2e-2)


def test_float32_fast_math_is_accurate_everywhere():
    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.logspace(-30, 30, 601), -torch.logspace(-30, 30, 601)])
    exact = x.double()

    def relative_error(got, want):
        return ((got.double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()

    assert relative_error(fast_math.atan(x), torch.atan(exact)) < 3e-7
    assert relative_error(fast_math.erf_from_gauss(x, torch.exp(-x * x)), torch.erf(exact)) < 1e-6
    assert relative_error(fast_math.asinh(x, fast_math.hypot1(x)), torch.asinh(exact)) < 1e-6
    assert relative_error(fast_math.hypot1(x), torch.sqrt(1 + exact * exact)) < 3e-7
    huge = torch.tensor([1e30, -3e38, float("inf")])
    assert torch.isfinite(fast_math.hypot1(huge[:2])).all() and fast_math.asinh(huge, fast_math.hypot1(huge))[2] == float("inf")
    assert fast_math.atan(torch.tensor([float("inf")])).item() == pytest.approx(torch.pi / 2)


def test_mode_is_validated_and_restored():
    with pytest.raises(ValueError, match="ACTSEARCH_FUSED"):
        fused.set_mode("fast")
    before = fused.get_mode()
    with fused.using("off"):
        assert not fused.enabled()
    assert fused.get_mode() == before


@pytest.mark.slow
@pytest.mark.parametrize("beta_mode", ["scalar", "channel"])
def test_compiled_kernels_match_eager(beta_mode):
    """torch.compile'd kernels (a small operator set keeps compiling short) against the eager ones."""
    small = {"unary": ["identity", "relu", "tanh", "scale", "shift", "erf"], "binary": ["add", "sigmul", "interp"]}
    net = supernet("darts", "complex", beta_mode, torch.float32, small)
    site, x = net.sites()[1], inputs(torch.float32, shape=(4, 16, 4, 4))
    params = [x, *net.arch_parameters(), *net.beta_parameters()]
    eager = site_output(net, site, x, "eager")
    compiled = site_output(net, site, x, "compile")
    assert torch.allclose(compiled, eager, **FLOAT32)
    assert_same(grads(compiled, params), grads(eager, params), dict(rtol=1e-3, atol=1e-4), beta_mode)


@pytest.mark.slow
def test_gdas_operator_kernels_match_eager():
    """GDAS in compile mode: the cell runs eagerly, each sampled operator as a compiled kernel of its own."""
    small = {"unary": ["sqrt", "asinh", "gelu", "scale"], "binary": ["sigmul", "interp", "max"]}
    net = supernet("gdas", "complex", "scalar", torch.float32, small)
    site, x = net.sites()[1], inputs(torch.float32, shape=(4, 16, 4, 4))
    for _ in range(3):
        net.relaxation.resample(net.cell.alpha_dict())
        params = [x, *net.arch_parameters(), *net.beta_parameters()]
        eager, compiled = site_output(net, site, x, "eager"), site_output(net, site, x, "compile")
        assert torch.allclose(compiled, eager, **FLOAT32)
        assert_same(grads(compiled, params), grads(eager, params), dict(rtol=1e-3, atol=1e-4), "gdas")

