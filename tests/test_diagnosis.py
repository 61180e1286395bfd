"""bench/diagnosis.py: the factorial design, the copy of a clip-none run from a clip-5 twin that never reached the
clip (and the training fact it rests on), the scheduler, and the paired tables, against hand computations."""
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import diagnosis  # noqa: E402
from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.space.models import build_resnet  # noqa: E402
from pipeline.training.device import seed_everything  # noqa: E402
from pipeline.training.train import train_model  # noqa: E402
from pipeline.training.train_config import TrainConfig  # noqa: E402
from tests.train_subprocess_script import colour_task  # noqa: E402


def test_design_crosses_every_factor_and_gives_a_betaless_function_one_level():
    runs = diagnosis.design([0])
    cells = {(r["function"], r["sqrt"], r["clip"], r["betas"]) for r in runs}
    assert len(cells) == len(runs) == 3 * 8 + 4 + 2 * 2  # three functions with betas, one without, two baselines
    betaless = [r for r in runs if r["function"] == "max(elu(elu),sqrt)"]
    assert {r["betas"] for r in betaless} == {"-"} and len(betaless) == 4
    assert {r["betas"] for r in runs if r["function"] == "relu|sqrt"} == {"trained", "frozen"}


def _train(clip):
    train = BatchLoader(*colour_task(48, 1), 8, shuffle=True, augment=True, seed=3)
    test = BatchLoader(*colour_task(16, 2), 16, shuffle=False, augment=False)
    seed_everything(0)
    model = build_resnet("resnet8")
    norms = []
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, device="cpu", seed=0, grad_clip=clip)
    train_model(model, train, test, cfg, progress=False, on_step=lambda step, norm: norms.append(norm))
    return model.state_dict(), norms


@pytest.mark.usefixtures("one_thread")
def test_a_clip_the_norms_never_reach_trains_bit_for_bit_like_no_clip():
    """What lets the bench copy a clip-none run from its never-clipped twin: the same weights to the last bit."""
    unclipped, norms = _train(None)
    clip = 1.5 * max(norms)
    never_reached, same_norms = _train(clip)
    assert same_norms == norms
    assert all(torch.equal(unclipped[k], never_reached[k]) for k in unclipped)
    reached, _ = _train(0.5 * max(norms))  # a clip that acts does change them: the comparison can fail
    assert not all(torch.equal(unclipped[k], reached[k]) for k in unclipped)


def twin(norm_max, status="ok"):
    run = {"function": "relu", "sqrt": "-", "clip": "5", "betas": "-", "seed": 1}
    return {**run, "id": diagnosis.run_id(run), "status": status, "top1": 50.0, "grad_norm_max": norm_max}


def test_a_clip_none_run_is_copied_only_from_a_twin_that_trained_below_the_clip():
    run = {"function": "relu", "sqrt": "-", "clip": "none", "betas": "-", "seed": 1}
    assert diagnosis.clipped_twin(run) == twin(1.0)["id"] and diagnosis.clipped_twin(twin(1.0)) is None
    copy = diagnosis.unclipped_copy(run, twin(3.94))
    assert copy["clip"] == "none" and copy["id"] == diagnosis.run_id(run) and copy["derived_from"] == twin(1.0)["id"]
    assert copy["top1"] == 50.0
    assert diagnosis.unclipped_copy(run, twin(4.999)) is None  # within float32 rounding of the clip: train it
    assert diagnosis.unclipped_copy(run, twin(7.0)) is None
    assert diagnosis.unclipped_copy(run, twin(float("nan"))) is None
    assert diagnosis.unclipped_copy(run, twin(3.0, status="diverged")) is None


def test_the_scheduler_trains_a_clip_none_run_only_when_its_twin_was_clipped():
    runs = [r for r in diagnosis.design([0]) if r["function"] in ("relu", "relu|sqrt") and r["betas"] != "frozen"]
    runs.sort(key=diagnosis.cell_priority)
    assert runs[0]["clip"] == "none"  # the first in line must wait for its twin
    started, records = [], {}

    def start(run):
        started.append(diagnosis.run_id(run))
        future = Future()
        clipped = run["sqrt"] == "ramp"  # the steep sqrt reaches the clip, ReLU and GRAFS's sqrt do not
        future.set_result({**run, "id": diagnosis.run_id(run), "status": "ok", "top1": 40.0 + len(started),
                           "grad_norm_max": 9.0 if clipped else 3.0})
        return future

    diagnosis.run_all(runs, records, start, lambda r: records.update({r["id"]: r}), workers=2)
    assert set(records) == {diagnosis.run_id(r) for r in runs}
    copied = {k for k, r in records.items() if "derived_from" in r}
    assert copied == {diagnosis.run_id(r) for r in runs if r["clip"] == "none" and r["sqrt"] != "ramp"}
    assert not copied & set(started)
    ramp_none = diagnosis.run_id({**runs[0], "function": "relu|sqrt", "sqrt": "ramp", "betas": "trained"})
    assert started.index(ramp_none) > started.index(diagnosis.clipped_twin(records[ramp_none]))


def rec(function, sqrt, clip, betas, seed, top1, status="ok"):
    return {"function": function, "sqrt": sqrt, "clip": clip, "betas": betas, "seed": seed, "top1": top1,
            "status": status, "grad_norm_max": 1.0, "grad_norm_median": 1.0}


def test_paired_difference_from_relu_and_factor_effects_by_hand():
    records = [rec("relu", "-", c, "-", s, 50.0 + s) for c in ("none", "5") for s in (0, 1, 2)]
    gains = {0: 1.0, 1: 3.0, 2: 2.0}  # GRAFS's sqrt minus the ramp, per seed
    for s in (0, 1, 2):
        records.append(rec("f", "ramp", "5", "frozen", s, 45.0 + s))
        records.append(rec("f", "grafs", "5", "frozen", s, 45.0 + s + gains[s]))
    records.append(rec("f", "ramp", "none", "frozen", 0, 10.0, status="diverged"))
    records.append(rec("f", "grafs", "none", "frozen", 0, 47.0))
    paired = diagnosis.vs_relu(records)
    # ReLU of the same seed and clip: grafs/5/frozen is (45 + s + gain) - (50 + s) = gain - 5
    assert paired["f", "grafs", "5", "frozen"]["diff"] == pytest.approx(-3.0)
    assert paired["f", "grafs", "5", "frozen"]["p"] == pytest.approx(stats.ttest_1samp([-4, -2, -3], 0).pvalue)
    assert paired["f", "ramp", "5", "frozen"]["diff"] == -5.0 and paired["f", "ramp", "5", "frozen"]["p"] is None
    assert ("f", "ramp", "none", "frozen") not in paired  # a diverged run has no accuracy to pair
    effects = {(r["factor"], r["function"]): r for r in diagnosis.factor_effects(records)}
    sqrt = effects["sqrt: ramp -> grafs", "f"]
    assert (sqrt["pairs"], sqrt["failed"], sqrt["diff"]) == (3, 1, pytest.approx(2.0))
    assert sqrt["p"] == pytest.approx(stats.ttest_1samp([1.0, 3.0, 2.0], 0).pvalue)
    clip = effects["clip: none -> 5", "f"]
    assert (clip["pairs"], clip["failed"], clip["diff"]) == (1, 1, pytest.approx(45.0 + 1.0 - 47.0))
    assert effects["clip: none -> 5", "all"]["pairs"] == 4  # f's pair plus ReLU's three (difference 0)
    records.append(rec("f", "ramp", "none", "frozen", 1, 13.6, status="failed_to_learn"))
    table = diagnosis.markdown(diagnosis.cell_rows(records), paired)
    assert "| relu\\|sqrt |" in diagnosis.markdown(diagnosis.cell_rows([rec("relu|sqrt", "-", "5", "-", 0, 1.0)]))
    assert "| f | ramp | none | frozen | 0/2 | 1 diverged, 1 failed_to_learn | - |" in table
    assert "| f | grafs | 5 | frozen | 3/3 | - | 48.00 | 1.73 | -3.00 (0.035) |" in table  # sd of 46, 49, 49


def test_a_cell_whose_runs_had_no_finite_gradient_norm_has_no_median():
    nan_run = {**rec("f", "ramp", "none", "trained", 0, 10.0, status="diverged"), "grad_norm_median": None}
    rows = diagnosis.cell_rows([nan_run, {**rec("f", "ramp", "none", "trained", 1, 50.0), "grad_norm_median": 3.0},
                                {**rec("f", "ramp", "none", "trained", 2, 50.0), "grad_norm_median": 5.0}])
    assert rows[0]["grad_norm_median"] == 4.0  # the median of the recorded ones
    assert diagnosis.cell_rows([nan_run])[0]["grad_norm_median"] is None
