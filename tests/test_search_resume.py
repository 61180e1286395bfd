"""A search (DrNAS, GDAS) killed with SIGKILL at a known batch in the middle of an epoch resumes (not restarts) and ends exactly where an
uninterrupted search ends: same genotype, supernet weights, alphas and history."""

import pytest
import torch

from pipeline.training.checkpoint import CheckpointError
from pipeline.search.loop import run_search
from tests import search_subprocess_script as script



@pytest.mark.parametrize("optimizer", ["drnas", "gdas"])  # Dirichlet samples; Gumbel generator and temperature
def test_killed_search_resumes_to_the_same_result(tmp_path, optimizer):
    reference, resumed, _ = script.kill_and_resume(tmp_path, "--optimizer", optimizer)
    if optimizer == "gdas":  # the temperature and the Gumbel noise stream continue where they stopped
        assert resumed["relaxation"]["temperature"] == reference["relaxation"]["temperature"] == pytest.approx(0.1)
        assert torch.equal(resumed["relaxation"]["generator"], reference["relaxation"]["generator"])
        assert [r["temperature"] for r in resumed["history"]] == pytest.approx([10.0, 5.05, 0.1])


def test_truncated_search_checkpoint_is_reported_not_used(tmp_path):
    ckpt = tmp_path / "search.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    from pipeline.data.augment import BatchLoader
    from tests.train_subprocess_script import colour_task

    loaders = [BatchLoader(*colour_task(32, seed=s), 16, shuffle=True, augment=False) for s in (1, 2)]
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is unreadable.*delete it to restart"):
        run_search(script.CONFIG, *loaders, checkpoint_path=ckpt)
