"""A search (DrNAS, GDAS) killed with SIGKILL at a known batch in the middle of an epoch resumes (not restarts) and ends exactly where an
uninterrupted search ends: same genotype, supernet weights, alphas and history."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.training.checkpoint import CheckpointError, load_checkpoint
from pipeline.search.loop import run_search
from tests import search_subprocess_script as script
from tests.train_subprocess_script import wait_for_marker_and_kill

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "search_subprocess_script.py"


@pytest.mark.parametrize("optimizer", ["drnas", "gdas"])  # Dirichlet samples; Gumbel generator and temperature
def test_killed_search_resumes_to_the_same_result(tmp_path, optimizer):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def command(name, *extra):
        return [sys.executable, str(SCRIPT), str(tmp_path / f"{name}.ckpt"), str(tmp_path / f"{name}.out"),
                "--optimizer", optimizer, *extra]

    threads = torch.get_num_threads()
    try:
        script.main(command("reference")[2:])  # uninterrupted, in this process
    finally:
        torch.set_num_threads(threads)
    marker = tmp_path / "blocked"
    with open(tmp_path / "killed.log", "w") as log:  # blocks in epoch index 1 at batch 2: epoch 1 is checkpointed
        process = subprocess.Popen(command("killed", "--block-at", "1", "2", str(marker)), env=env, cwd=REPO,
                                   stderr=log)
    try:
        wait_for_marker_and_kill(process, marker)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (tmp_path / "killed.out").exists()
    assert load_checkpoint(tmp_path / "killed.ckpt")["epoch"] == 1
    rerun = subprocess.run(command("killed"), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming search from epoch 1" in rerun.stderr
    reference, resumed = (torch.load(tmp_path / f"{n}.out", weights_only=True) for n in ("reference", "killed"))
    assert resumed["genotype"] == reference["genotype"]
    assert json.dumps(resumed["history"]) == json.dumps(reference["history"])
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), f"{name} differs"
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
