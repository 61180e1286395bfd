"""bench/retrain.py and bench/recipe.py on a tiny image tree: the plain loop and `train_model` compute the same
trajectory (the premise of the retrain benchmark), and the recipe bench's default recipe is that same loop."""
import json

import pytest

from bench import recipe, retrain
from tests.test_data import make_tree

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cifar")
    make_tree(root / "src", n_train=6, n_test=3)
    return ["--source", str(root / "src"), "--cache-dir", str(root / "cache"), "--train-size", "40",
            "--epochs", "2", "--batch", "8", "--threads", "1"]


def test_plain_loop_and_train_model_end_at_the_same_numbers(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "records.json"
    records = retrain.main(tiny_cifar + ["--variants", "plain,project", "--json", str(out)])
    by_variant = {r["variant"]: r for r in records}
    assert by_variant["plain"]["test_top1"] == by_variant["project"]["test_top1"]
    assert by_variant["plain"]["test_loss"] == pytest.approx(by_variant["project"]["test_loss"], rel=1e-6)
    assert by_variant["plain"]["ratio_to_plain"] == 1.0
    assert json.loads(out.read_text()) == records
    assert "x plain" in capsys.readouterr().out


def test_recipe_default_is_the_plain_loop_and_its_options_change_the_run(tiny_cifar, capsys):
    plain = {r["variant"]: r for r in retrain.main(tiny_cifar + ["--variants", "plain"])}["plain"]
    default = recipe.main(tiny_cifar)
    assert default["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-6)
    assert default["test_top1"] == plain["test_top1"]
    torch_init = recipe.main(tiny_cifar + ["--init", "torch"])
    assert torch_init["test_loss"] != pytest.approx(default["test_loss"], rel=1e-6)
    assert {"init": "torch", "schedule": "warmcos", "batch": 8}.items() <= torch_init.items()
    assert "epoch 2 train loss" in capsys.readouterr().err
