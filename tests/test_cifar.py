"""On the real CIFAR-10 images (the shared JPEG archive): a ReLU baseline learns, and every optimizer and space
runs a short search that ends in a genotype, a formula and a plot. Slow: run by CI, skipped with -m 'not slow'.

The searches run their fused cells eagerly: compiling the kernels of every optimizer and space (cold, as on CI) for
these 8 steps per search made the six searches take 10.5 minutes in the parallel suite; eagerly they take 77 s on
an idle machine. The compiled kernels are checked against the eager ones in tests/test_fused.py."""
import time

import pytest
import torch

from pipeline.data.augment import BatchLoader
from pipeline.kernels import fused
from pipeline.data.cifar import balanced_subset, load_cifar10, split_indices
from pipeline.analysis.describe import describe_genotype
from pipeline.search.discretize import discretize
from pipeline.space.genotype import RELU
from pipeline.space.models import build_resnet
from pipeline.search.loop import SearchConfig, run_search
from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    from tests.conftest import shared_archive_or_skip

    return load_cifar10(shared_archive_or_skip(), tmp_path_factory.mktemp("cache"))


def test_relu_resnet8_learns_cifar10_subset(cifar):
    train_idx = balanced_subset(cifar.train_labels, 5000, seed=0)
    train = BatchLoader(cifar.train_images[train_idx], cifar.train_labels[train_idx], 32, shuffle=True,
                        augment=True, seed=0)
    test = BatchLoader(cifar.test_images, cifar.test_labels, 500, shuffle=False, augment=False)
    torch.manual_seed(0)
    model = build_resnet("resnet8", RELU.factory())
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, weight_decay=5e-4, schedule="cosine", device="cpu", seed=0)
    result = train_model(model, train, test, cfg, progress=False)
    print(f"ReLU ResNet8, 3 epochs on 5,000 images: test top-1 {result.final['top1']:.2f}%, "
          f"top-5 {result.final['top5']:.2f}%")
    assert result.status == "ok"
    assert result.final["top1"] > 35.0
    assert result.final["top5"] > result.final["top1"]


@pytest.mark.parametrize("optimizer", ["darts", "gdas", "drnas"])
@pytest.mark.parametrize("space", ["simple", "complex"])
def test_short_search_on_cifar10(cifar, optimizer, space, tmp_path):
    subset = balanced_subset(cifar.train_labels, 256, seed=0)
    train_idx, val_idx = split_indices(len(subset), 128, 128, seed=0)
    images, labels = cifar.train_images[subset], cifar.train_labels[subset]
    train = BatchLoader(images[train_idx], labels[train_idx], 64, shuffle=True, augment=True, seed=0)
    val = BatchLoader(images[val_idx], labels[val_idx], 64, shuffle=True, augment=False, seed=1)
    cfg = SearchConfig(optimizer=optimizer, space=space, epochs=2, batch_size=64, device="cpu", seed=0)
    started = time.perf_counter()
    with fused.using("eager"):
        result = run_search(cfg, train, val)
        genotype, gap = discretize(result.supernet, val, torch.device("cpu"))
    summary = describe_genotype(genotype, tmp_path) | gap
    seconds = time.perf_counter() - started
    print(f"{optimizer}-{space}: {seconds:.1f} s, {summary['formula']}, gap {summary['discretization_gap_top1']:.1f}")
    for name in ("genotype.json", "formula.txt", "formula.tex", "activation.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    last = result.history[-1]
    edges = list(last["operator_weights"])
    argmax = tuple(max(last["operator_weights"][e], key=last["operator_weights"][e].get) for e in edges)
    assert genotype.ops == argmax  # the genotype is the argmax of the recorded operator weights
    assert summary["discretization_gap_top1"] == pytest.approx(gap["supernet_val_top1"] - gap["discretized_val_top1"])
    if optimizer == "darts":  # deterministic: discretize measures the supernet the last epoch measured
        assert gap["supernet_val_top1"] == pytest.approx(last["val_top1"])
    assert len(result.history) == 2
