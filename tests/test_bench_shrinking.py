"""bench/shrinking_search.py: a tiny run of each kernel policy (batch 16: under the compile threshold, so both run
eagerly here) and its argument checks."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import shrinking_search  # noqa: E402


@pytest.mark.slow  # two child processes, each importing torch and running a 2-epoch search: about 40 s
def test_each_policy_runs_a_shrinking_search_in_its_own_process(tmp_path):
    out = tmp_path / "shrink.json"
    records = shrinking_search.main(["--space", "simple", "--epochs", "2", "--images", "32", "--batch", "16",
                                     "--json", str(out)])
    assert json.loads(out.read_text()) == records
    assert [r["policy"] for r in records] == ["full", "eager"]
    for r in records:
        assert len(r["epoch_s"]) == 2 and r["wall_s"] >= sum(r["epoch_s"])
        # GRAFS's schedule: nothing dropped in the warm-start epoch, one operator per edge left after the last.
        assert r["remaining_fraction"] == [1.0, 0.0]


@pytest.mark.parametrize("argv, message", [
    (["--policies", "full,compiled"], "unknown --policies ['compiled']"),
    (["--epochs", "1"], "--epochs must be at least 2"),
    (["--images", "8", "--batch", "16"], "--images at least --batch"),
])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        shrinking_search.parse_args(argv)
    assert message in capsys.readouterr().err
