import math

import pytest
import torch

from pipeline.training.metrics import MetricAccumulator, topk_accuracy, topk_correct


def test_topk_on_hand_made_logits_distinguishes_top1_from_top5():
    # 6 classes. Sample 0: target is the best class. Sample 1: target ranks 3rd. Sample 2: target ranks last.
    logits = torch.tensor([
        [0.1, 0.9, 0.2, 0.3, 0.0, -1.0],  # target 1: rank 1
        [0.5, 0.4, 0.3, 0.9, 0.8, 0.0],   # target 0: rank 3 (behind 0.9 and 0.8)
        [0.5, 0.4, 0.3, 0.9, 0.8, 0.0],   # target 5: rank 6
    ])
    targets = torch.tensor([1, 0, 5])
    counts = topk_correct(logits, targets, ks=(1, 2, 3, 5))
    assert counts == {1: 1, 2: 1, 3: 2, 5: 2}
    accuracy = topk_accuracy(logits, targets)
    # A "top-5 stored as top-1" bug would report 66.7 as top-1.
    assert accuracy[1] == pytest.approx(100 / 3)
    assert accuracy[5] == pytest.approx(200 / 3)


def test_ties_count_against_the_target():
    # Constant logits (a collapsed network) must not score 100%.
    flat = torch.zeros(4, 10)
    assert topk_correct(flat, torch.tensor([0, 3, 7, 9]), ks=(1, 5)) == {1: 0, 5: 0}
    # Target tied with one other class for first place: not top-1, but top-2.
    logits = torch.tensor([[2.0, 2.0, 1.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0]), ks=(1, 2)) == {1: 0, 2: 1}
    assert topk_correct(logits, torch.tensor([1]), ks=(1, 2)) == {1: 0, 2: 1}
    # A tie below the target does not hurt it.
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0]])
    assert topk_correct(logits, torch.tensor([0]), ks=(1,)) == {1: 1}


def test_k_larger_than_the_number_of_classes_is_clipped():
    logits = torch.tensor([[0.3, 0.1, 0.2], [0.0, 1.0, 2.0]])
    targets = torch.tensor([1, 0])
    assert topk_correct(logits, targets, ks=(1, 3, 5)) == {1: 0, 3: 2, 5: 2}
    assert topk_accuracy(logits, targets, ks=(5,)) == {5: 100.0}


def test_nan_rows_are_wrong():
    logits = torch.tensor([[float("nan"), 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 0]), ks=(1, 5)) == {1: 1, 5: 1}


@pytest.mark.parametrize("logits, targets, ks, message", [
    (torch.zeros(3), torch.zeros(3, dtype=torch.long), (1,), "2-D"),
    (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), (1,), "one label per"),
    (torch.zeros(3, 4), torch.tensor([0, 1, 4]), (1,), r"\[0, 4\)"),
    (torch.zeros(3, 4), torch.zeros(3), (1,), "integer"),
    (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), (0,), "positive"),
])
def test_bad_inputs_raise_clear_errors(logits, targets, ks, message):
    with pytest.raises(ValueError, match=message):
        topk_correct(logits, targets, ks)


def test_accumulator_weights_batches_by_size():
    accumulator = MetricAccumulator()
    # Batch of 1, correct at top-1; loss 1.0.
    accumulator.update(torch.tensor(1.0), torch.tensor([[5.0, 0.0]]), torch.tensor([0]))
    # Batch of 3, all wrong at top-1 (2 classes, so all right at "top-5"); loss 3.0.
    accumulator.update(3.0, torch.tensor([[0.0, 5.0]] * 3), torch.tensor([0, 0, 0]))
    result = accumulator.result()
    assert result["loss"] == pytest.approx((1.0 * 1 + 3.0 * 3) / 4)  # not the batch mean (1 + 3) / 2
    assert result["top1"] == pytest.approx(25.0)
    assert result["top5"] == pytest.approx(100.0)
    assert accumulator.count == 4 and accumulator.num_classes == 2


def test_empty_accumulator_reports_nan():
    result = MetricAccumulator().result()
    assert set(result) == {"loss", "top1", "top5"}
    assert all(math.isnan(v) for v in result.values())


def test_bool_ks_and_mismatched_rows_are_rejected_with_the_row_count():
    logits, targets = torch.zeros(3, 10), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="ks must be a non-empty sequence of positive ints"):
        topk_correct(torch.zeros(2, 10), targets, ks=(True,))
    with pytest.raises(ValueError, match=r"one label per logits row \(3\), got shape \(2,\)"):
        topk_correct(logits, targets)
    with pytest.raises(ValueError, match=r"expected logits \(batch, classes\) and targets \(batch,\), got \(3, 10\) "
                                         r"and \(2,\)"):
        MetricAccumulator().update(torch.tensor(1.0), logits, targets)


def test_empty_batches_give_nan_accuracy_and_loss():
    accuracy = topk_accuracy(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
    assert all(math.isnan(v) for v in accuracy.values())
    assert math.isnan(MetricAccumulator().mean_loss())


def test_accumulator_rejects_one_dimensional_logits():
    with pytest.raises(ValueError, match=r"expected logits \(batch, classes\) and targets \(batch,\), got \(3,\)"):
        MetricAccumulator().update(torch.tensor(1.0), torch.zeros(3), torch.zeros(3, dtype=torch.long))
