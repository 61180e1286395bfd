"""The search's beta options (GRAFS): betas drawn from N(1, 0.25) at the start, and a bound on their magnitude."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.search.cell import Supernet
from pipeline.search.loop import SearchConfig, build_supernet
from pipeline.search.relax import Softmax
from pipeline.space.ops import get_op

SMALL = {"unary": ["identity", "relu", "scale", "shift", "const"], "binary": ["add", "mul", "interp"]}


def betas(net: Supernet) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in net.named_parameters() if "betas." in name}


def test_default_betas_start_at_each_operators_own_value():
    net = Supernet("resnet8", "complex", SMALL, Softmax())
    for name, value in betas(net).items():
        assert torch.equal(value, torch.tensor(get_op(name.split("__")[1]).beta_init)), name


def test_grafs_betas_are_drawn_from_normal_1_quarter():
    torch.manual_seed(0)
    net = Supernet("resnet8", "complex", SMALL, Softmax(), beta_mode="channel", beta_init="grafs")
    drawn = torch.cat([v.flatten() for k, v in betas(net).items() if not k.endswith("__interp")])
    # scale, shift, const on 4 unary edges, per channel at 7 sites (the stem and 2 per block: 16, 16, 32, 64).
    assert drawn.numel() == 3 * 4 * (16 + 2 * 16 + 2 * 32 + 2 * 64)
    # 2,880 draws: mean and std within about 4 standard errors of N(1, 0.25)'s.
    assert abs(float(drawn.mean()) - 1.0) < 0.02 and abs(float(drawn.std()) - 0.25) < 0.015
    interp = [v for k, v in betas(net).items() if k.endswith("__interp")]
    assert interp and all(torch.equal(v, torch.zeros_like(v)) for v in interp)  # GRAFS's BetaMix: b = 0, sigmoid(0) = 1/2
    torch.manual_seed(0)
    again = Supernet("resnet8", "complex", SMALL, Softmax(), beta_mode="channel", beta_init="grafs")
    assert all(torch.equal(a, b) for a, b in zip(betas(net).values(), betas(again).values()))  # seeded


def test_betas_are_projected_into_the_bound_before_every_forward():
    net = build_supernet(SearchConfig(space="simple", op_set=SMALL, beta_clamp=2.0))
    params = dict(net.named_parameters())
    with torch.no_grad():
        params["cell.betas.u1__shift"].fill_(7.5)
        params["cell.betas.u2__const"].fill_(-3.0)
        params["cell.betas.u1__scale"].fill_(1.5)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    F.cross_entropy(net(x), y).backward()
    assert [float(params[f"cell.betas.{k}"].detach()) for k in ("u1__shift", "u2__const", "u1__scale")] == \
        [2.0, -2.0, 1.5]
    # A projection, not a functional clamp: at the bound the gradient still reaches the beta.
    assert float(params["cell.betas.u1__shift"].grad.abs()) > 0


def test_no_bound_leaves_betas_free():
    net = build_supernet(SearchConfig(space="simple", op_set=SMALL))
    shift = dict(net.named_parameters())["cell.betas.u1__shift"]
    with torch.no_grad():
        shift.fill_(7.5)
    net(torch.randn(2, 3, 8, 8))
    assert float(shift.detach()) == 7.5


@pytest.mark.parametrize("field,value,message", [("beta_clamp", 0.0, "beta_clamp"), ("beta_init", "uniform",
                                                                                    "beta_init")])
def test_bad_beta_options_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**{field: value})
