"""seed_everything's deterministic mode: deterministic kernels without torch's NaN fill of every new tensor."""
import torch

from pipeline.training.device import seed_everything
from tests.test_eval_every import run  # the tiny colour-task run


def test_deterministic_mode_skips_the_nan_fill_and_repeats_exactly():
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        # The fill costs a pass over every output; bench/retrain.py measures it (plain-nan-fill).
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        conv = torch.nn.Conv2d(3, 8, 3)
        x = torch.randn(4, 3, 16, 16)
        first = torch.autograd.grad(conv(x).square().sum(), conv.weight)[0]
        seed_everything(0, deterministic=True)
        conv = torch.nn.Conv2d(3, 8, 3)
        x = torch.randn(4, 3, 16, 16)
        assert torch.equal(torch.autograd.grad(conv(x).square().sum(), conv.weight)[0], first)
    finally:
        seed_everything(0, deterministic=was_deterministic)


def test_train_config_deterministic_sets_the_mode_of_a_cpu_run():

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in (False, True):
            run(eval_every=1, epochs=1, deterministic=deterministic)
            assert torch.are_deterministic_algorithms_enabled() is deterministic
    finally:
        seed_everything(0, deterministic=was_deterministic)
