"""bench/shrinking.py: pricing a shrinking search's schedule from measured points, checked by hand on made-up
step times (the measuring part is bench/measure.py's, tested with throughput.py)."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import shrinking  # noqa: E402

# A cell of 5 candidates on 2 edges (3 drops); step times fall linearly from the full set to the last one.
STEPS = {"relu_weight_step_s": 0.04, "relu_weight_reference_s": 0.128, "relu_step_s": 0.128}
POINTS = [
    STEPS | {"space": "simple", "fraction": 0.0, "candidates": 5, "arch_eager_s": 0.4, "weight_eager_s": 0.2,
             "arch_compiled_s": 0.1, "weight_compiled_s": 0.05, "compile_s": 10.0},
    STEPS | {"space": "simple", "fraction": 1.0, "candidates": 2, "arch_eager_s": 0.2, "weight_eager_s": 0.1,
             "arch_compiled_s": 0.1, "weight_compiled_s": 0.05, "compile_s": 4.0},
]
RELU_EPOCH = 10 * 64 * 0.128 / 128  # 10 iterations' images at the ReLU step's speed: 0.64 s


def test_a_schedule_is_priced_epoch_by_epoch_and_the_one_kernel_compiles_once():
    # 3 epochs of 10 iterations, shrinking from epoch 1: logspace(0, log10(2), 3) = 1, 1.41, 2 -> drops [0, 2, 1];
    # epoch 0 is a warm start (weight step = ReLU's 0.04 s).
    eager = shrinking.price(POINTS, 3, 10, 1, 1, "eager")
    # Epoch 1 has 2/3 of the drops: arch 0.4 - 0.2 * 2/3, weight 0.2 - 0.1 * 2/3.
    epochs = [10 * (0.4 + 0.04), 10 * (0.4 - 0.2 * 2 / 3 + 0.2 - 0.1 * 2 / 3), 10 * (0.2 + 0.1)]
    assert eager["seconds"] == pytest.approx(sum(epochs))
    assert eager["epoch_ratios"] == pytest.approx([RELU_EPOCH / s for s in epochs])
    assert eager["mean_epoch_ratio"] == pytest.approx(sum(RELU_EPOCH / s for s in epochs) / 3)
    assert eager["overall_ratio"] == pytest.approx(3 * RELU_EPOCH / sum(epochs))
    # The one kernel: compiled steps throughout, its compile (the first point's 10 s) once, in epoch 0.
    compiled = [10 * (0.1 + 0.04), 10 * 0.15, 10 * 0.15]
    warm = shrinking.price(POINTS, 3, 10, 1, 1, "one kernel, warm cache")
    assert warm["seconds"] == pytest.approx(sum(compiled))
    assert warm["epoch_ratios"] == pytest.approx([RELU_EPOCH / s for s in compiled])
    cold = shrinking.price(POINTS, 3, 10, 1, 1, "one kernel, cold cache")
    assert cold["seconds"] == pytest.approx(sum(compiled) + 10.0)
    with pytest.raises(ValueError, match="policy must be one of"):
        shrinking.price(POINTS, 3, 10, 1, 1, "compile every set")


def test_the_tables():
    rows = shrinking.summary(POINTS)
    assert [(r["schedule"], r["policy"]) for r in rows] == [
        (name, policy) for name, *_ in shrinking.SCHEDULES for policy in shrinking.POLICIES]
    text = shrinking.markdown(POINTS, rows, "cold")
    # 64 images in 0.6 s eager (0.15 s compiled) against 128 in 0.128 s: 0.107 and 0.427.
    assert "| simple | 0% | 5 | 400 / 100 | 200 / 50 | 0.11 | 0.43 | 10.0 |" in text
    assert text.count("\n| simple | ") == len(POINTS) + len(rows)
    # Two ReLU passes of 64 images (0.04 s each) against a ReLU step of 128 (0.128 s): (64 / 0.08) / 1000.
    assert "would give 0.80." in text


@pytest.mark.parametrize("argv, message", [
    (["--fractions", "0,half,1"], "comma-separated numbers"),
    (["--fractions", "0.5,1"], "must include 0 and 1"),
    (["--repeats", "0"], "must be positive"),
])
def test_bad_arguments_get_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        shrinking.parse_args(argv)
    assert message in capsys.readouterr().err
