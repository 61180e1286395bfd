"""A checkpoint belongs to its inputs (issue 24, item 1): a search or a retraining killed after its first epoch,
rerun on other data (a new data.seed, a new prepare) or other code, discards the checkpoint with a warning and ends
exactly as a fresh run on the new inputs, instead of resuming the old run ("resuming search from epoch 1")."""
import hashlib
import logging

import pytest
import torch

from pipeline.data.augment import BatchLoader
from pipeline.search.loop import TIMING_KEYS, run_search
from pipeline.space.models import build_resnet
from pipeline.training.device import seed_everything
from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig
from stages.common import ROOT, resume_or_restart, stage_inputs
from stages.evaluate import retraining_inputs
from tests.search_subprocess_script import CONFIG
from tests.train_subprocess_script import colour_task

pytestmark = pytest.mark.usefixtures("one_thread")
OLD, NEW = {"data/prepared/cifar10.pt": "0123456789abcdef"}, {"data/prepared/cifar10.pt": "fedcba9876543210"}


class Killed(Exception):
    """Stands in for SIGKILL after the first epoch's checkpoint."""


def kill_after_first_epoch(record):
    if record["epoch"] == 1:
        raise Killed


def search_loaders(seed: int, images: int = 64):
    return (BatchLoader(*colour_task(images, seed=seed), 16, shuffle=True, augment=True, seed=7),
            BatchLoader(*colour_task(64, seed=seed + 1), 16, shuffle=True, augment=False, seed=8))


def without_times(history):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


@pytest.mark.parametrize("change", ["inputs", "steps per epoch"])
def test_a_search_checkpoint_on_other_inputs_is_discarded_and_the_rerun_equals_a_fresh_one(tmp_path, caplog, change):
    checkpoint = tmp_path / "search.pt"
    with pytest.raises(Killed):  # epoch 1 checkpointed, on the old data
        run_search(CONFIG, *search_loaders(seed=1), checkpoint_path=checkpoint, on_epoch=kill_after_first_epoch,
                   checkpoint_inputs=OLD)
    assert checkpoint.exists()
    # New data: other images (a new data.seed) with new hashes, or a new split size with other steps per epoch.
    new_data, new_inputs = (search_loaders(seed=3), NEW) if change == "inputs" else (search_loaders(1, 48), OLD)
    with caplog.at_level(logging.WARNING):
        rerun = resume_or_restart(lambda path: run_search(CONFIG, *new_data, checkpoint_path=path,
                                                          checkpoint_inputs=new_inputs), checkpoint)
    expected = {"inputs": "inputs differs (data/prepared/cifar10.pt: '0123456789abcdef' in file vs "
                          "'fedcba9876543210' now)",
                "steps per epoch": "steps_per_epoch is 4 in the file but 3 for this run"}[change]
    assert "discarding checkpoint" in caplog.text and expected in caplog.text, caplog.text
    assert "resuming search" not in caplog.text
    fresh_data = search_loaders(seed=3) if change == "inputs" else search_loaders(1, 48)
    fresh = run_search(CONFIG, *fresh_data, checkpoint_inputs=new_inputs)
    assert rerun.genotype == fresh.genotype and without_times(rerun.history) == without_times(fresh.history)
    for name, tensor in fresh.supernet.state_dict().items():
        assert torch.equal(rerun.supernet.state_dict()[name], tensor), name


def test_a_retraining_checkpoint_on_other_inputs_is_discarded_and_the_rerun_equals_a_fresh_one(tmp_path, caplog):
    checkpoint = tmp_path / "train.pt"
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", seed=0)

    def train(path, data_seed: int, inputs: dict, on_epoch=None):
        seed_everything(0)
        model = build_resnet("resnet8")
        loaders = (BatchLoader(*colour_task(64, seed=data_seed), 16, shuffle=True, augment=True, seed=7),
                   BatchLoader(*colour_task(32, seed=data_seed + 1), 32, shuffle=False, augment=False))
        result = train_model(model, *loaders, cfg, checkpoint_path=path, progress=False, on_epoch=on_epoch,
                             checkpoint_meta={"network": "resnet8", "inputs": inputs})
        return model, result

    with pytest.raises(Killed):  # on_epoch of epoch 2 runs before its checkpoint: epoch 1 is checkpointed
        train(checkpoint, 1, OLD, lambda record: record["epoch"] == 2 and kill_after_first_epoch({"epoch": 1}))
    assert checkpoint.exists()
    with caplog.at_level(logging.WARNING):
        model, rerun = resume_or_restart(lambda path: train(path, 3, NEW), checkpoint)
    assert "discarding checkpoint" in caplog.text and ("meta differs (inputs.data/prepared/cifar10.pt: "
                                                      "'0123456789abcdef' in file vs 'fedcba9876543210' now)"
                                                      in caplog.text), caplog.text
    assert rerun.resumed_from_epoch == 0
    fresh_model, fresh = train(None, 3, NEW)
    assert without_times(rerun.history) == without_times(fresh.history)
    for name, tensor in fresh_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_stage_inputs_hash_every_dependency_dvc_yaml_lists(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  search:\n    matrix: {optimizer: [darts], seed: [0]}\n    deps:\n      - stages/search.py\n"
        "      - data/prepared/cifar10.pt\n      - results/${item.optimizer}-s${item.seed}/genotype.json\n"
        "      - pipeline/space\n")
    files = {"stages/search.py": b"code", "data/prepared/cifar10.pt": b"images", "results/darts-s0/genotype.json":
             b"{}", "pipeline/space/ops.py": b"ops", "pipeline/space/sub/more.py": b"more"}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "pipeline/space/__pycache__").mkdir()
    (tmp_path / "pipeline/space/__pycache__/ops.cpython-311.pyc").write_bytes(b"cache")
    item = {"optimizer": "darts", "seed": 0}
    hashes = stage_inputs("search", item, tmp_path)
    assert hashes == {name: hashlib.sha256(content).hexdigest()[:16] for name, content in files.items()}
    (tmp_path / "data/prepared/cifar10.pt").write_bytes(b"other images")  # a new data.seed, a new prepare
    changed = stage_inputs("search", item, tmp_path)
    assert {name for name in hashes if hashes[name] != changed[name]} == {"data/prepared/cifar10.pt"}


def test_the_real_stages_hash_their_data_genotype_and_code():
    search = stage_inputs("search", {"optimizer": "drnas", "space": "simple", "seed": 0})
    assert {"data/prepared/cifar10.pt", "data/prepared/search_split.pt", "stages/search.py", "pipeline/space/ops.py",
            "pipeline/search/loop.py"} <= set(search)
    retrain = retraining_inputs("searched", "drnas-simple", "resnet8", 1)  # as the evaluate stage asks
    assert {"data/prepared/cifar10.pt", "results/select/drnas-simple/genotype.json", "stages/evaluate.py",
            "pipeline/space/ops.py"} <= set(retrain)
    ops = hashlib.sha256((ROOT / "pipeline/space/ops.py").read_bytes()).hexdigest()[:16]
    assert search["pipeline/space/ops.py"] == retrain["pipeline/space/ops.py"] == ops  # one operator's formula
    custom = retraining_inputs("custom", "mine", "resnet20", 0)
    assert {"activations/mine.json", "data/prepared/cifar10.pt", "stages/evaluate.py"} <= set(custom)
    assert "data/prepared/search_split.pt" not in retraining_inputs("baseline", "relu", "resnet8", 0)
