"""Retraining a genotype as it was searched: one set of betas per network, shared by every activation site,
starting from the searched values; per-site and frozen betas stay available as options."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.data.augment import BatchLoader
from pipeline.kernels import fused
from pipeline.kernels.fused_genotype import fast_forward
from pipeline.space.genotype import Genotype, GenotypeActivation
from pipeline.space.models import build_resnet, count_parameters
from pipeline.training.device import seed_everything
from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig

SCRIPT = Path(__file__).with_name("train_subprocess_script.py")
_spec = importlib.util.spec_from_file_location("train_subprocess_script", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

SITES = {"resnet8": 7, "resnet20": 19}  # the stem's activation plus two per basic block
# Four operators with a beta: scale (u1), shift (u3), const (u4), interp (b2).
GENOTYPE = Genotype("complex", ("scale", "relu", "add", "shift", "const", "interp"),
                    (1.3, None, None, -0.4, 0.25, 0.7))
SHIFTED_RELU = Genotype("simple", ("relu", "const", "add"), (None, 0.3, None))  # the _ShiftedRelu fast path


def sites(model):
    return [m for m in model.modules() if isinstance(m, GenotypeActivation)]


def unique_betas(model):
    return {id(p): p for site in sites(model) for p in site.beta.values()}.values()


@pytest.mark.parametrize("network", sorted(SITES))
def test_one_beta_per_searched_operator_per_network(network):
    plain = count_parameters(build_resnet(network))
    shared = build_resnet(network, GENOTYPE.factory())
    assert len(sites(shared)) == SITES[network]
    assert count_parameters(shared) == plain + 4  # exactly the genotype's four betas, once
    searched = pytest.approx(sorted([1.3, -0.4, 0.25, 0.7]))  # float32 parameters: approx
    assert sorted(float(p.detach()) for p in unique_betas(shared)) == searched
    assert sorted(float(p.detach()) for p in shared.parameters() if p.dim() == 0) == searched
    per_site = build_resnet(network, GENOTYPE.factory(betas="per_site"))
    assert count_parameters(per_site) == plain + 4 * SITES[network]
    frozen = build_resnet(network, GENOTYPE.factory(train_betas=False))
    assert count_parameters(frozen) == plain and len(unique_betas(frozen)) == 4


def test_shared_betas_are_scalars_only():
    with pytest.raises(ValueError, match="needs per-site betas"):
        GENOTYPE.factory(beta_mode="channel")
    with pytest.raises(ValueError, match="unknown beta sharing"):
        GENOTYPE.factory(betas="global")
    model = build_resnet("resnet8", GENOTYPE.factory(beta_mode="channel", betas="per_site"))
    assert {tuple(p.shape) for p in unique_betas(model)} == {(16, 1, 1), (32, 1, 1), (64, 1, 1)}


def gradients(genotype, betas, mode):
    seed_everything(0)
    model = build_resnet("resnet8", genotype.factory(kernel=fast_forward, betas=betas))
    x, y = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    with fused.using(mode):
        F.cross_entropy(model(x), y).backward()
    return model


@pytest.mark.parametrize("genotype", [GENOTYPE, SHIFTED_RELU], ids=["fused-cell", "shifted-relu"])
@pytest.mark.parametrize("mode", ["off", "eager"])
def test_shared_gradient_is_the_sum_of_the_per_site_gradients(genotype, mode):
    """The independent computation: the same network with a copy of each beta per site; the shared beta's
    gradient is the sum of those copies' gradients (on the plain path and on the retraining fast path)."""
    shared, per_site = gradients(genotype, "shared", mode), gradients(genotype, "per_site", mode)
    for edge, beta in sites(shared)[0].beta.items():
        total = sum(site.beta[edge].grad for site in sites(per_site))
        assert torch.allclose(beta.grad, total, rtol=1e-5, atol=1e-7), edge


def test_a_gradient_step_changes_the_function_at_every_site_alike():
    grid = torch.linspace(-3, 3, 101)
    for betas, alike in (("shared", True), ("per_site", False)):
        model = gradients(GENOTYPE, betas, "off")
        before = sites(model)[0](grid).detach()
        torch.optim.SGD(model.parameters(), lr=0.5).step()
        after = [site(grid).detach() for site in sites(model)]
        assert not torch.allclose(after[0], before)
        assert all(torch.equal(a, after[0]) for a in after) == alike, betas


def test_saved_weights_load_back_shared(tmp_path):
    model = build_resnet("resnet8", GENOTYPE.factory())
    with torch.no_grad():
        sites(model)[3].beta["u1"].fill_(2.5)  # one site's beta is every site's beta
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded = build_resnet("resnet8", GENOTYPE.factory())
    loaded.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert [float(site.beta["u1"].detach()) for site in sites(loaded)] == [2.5] * SITES["resnet8"]
    assert len(unique_betas(loaded)) == 4


class Stop(Exception):
    pass


def test_resume_of_a_shared_beta_run_is_bit_exact(tmp_path):
    def run(**kwargs):
        seed_everything(0)
        model = build_resnet("resnet8", GENOTYPE.factory(kernel=fast_forward))
        train = BatchLoader(*script.colour_task(64, 1), 8, shuffle=True, augment=False, seed=3)
        test = BatchLoader(*script.colour_task(20, 2), 20, shuffle=False, augment=False)
        cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, device="cpu", seed=0)
        return model, train_model(model, train, test, cfg, progress=False, **kwargs)

    def stop_in_epoch_2(record):
        if record["epoch"] == 2:
            raise Stop
    reference, _ = run()
    with pytest.raises(Stop):
        run(checkpoint_path=tmp_path / "run.pt", on_epoch=stop_in_epoch_2)
    resumed, result = run(checkpoint_path=tmp_path / "run.pt")
    assert result.resumed_from_epoch == 1
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert float(sites(resumed)[0].beta["u3"].detach()) != pytest.approx(-0.4)  # the shared betas trained
    assert len(unique_betas(resumed)) == 4
