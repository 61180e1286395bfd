"""bench/pieces.py: the cost and thread scaling of a search step's pieces, on a tiny batch (eager cells only)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import pieces  # noqa: E402

CHOSEN = ["relu", "simple cell arch step eager", "complex cell weight step eager", "drnas operator weights per site"]


@pytest.mark.slow  # two child processes that import torch: about 20 s
def test_a_run_per_thread_count_gives_speedups_over_one_thread(tmp_path):
    out, table = tmp_path / "pieces.json", tmp_path / "pieces.md"
    records = pieces.main(["--threads", "1,2", "--batch", "2", "--repeats", "1", "--pieces", ",".join(CHOSEN),
                           "--json", str(out), "--markdown", str(table)])
    assert json.loads(out.read_text()) == records
    assert sorted((r["piece"], r["threads"]) for r in records) == sorted((p, t) for p in CHOSEN for t in (1, 2))
    one = {r["piece"]: r["ms"] for r in records if r["threads"] == 1}
    for r in records:
        assert r["speedup"] == pytest.approx(one[r["piece"]] / r["ms"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["threads"])
    # Candidate evaluations: elements (2 x 16 x 32 x 32) x candidates on all edges (grafs: 23 per unary edge, 9 per
    # binary edge; simple 23 + 23 + 9, complex twice that) per nanosecond.
    for r in records:
        candidates = {"simple": 55, "complex": 110}.get(r["piece"].split(" ")[0])
        if candidates:
            assert r["candidate_evals_per_ns"] == pytest.approx(2 * 16 * 32 * 32 * candidates / (r["ms"] * 1e6))
        else:
            assert "candidate_evals_per_ns" not in r
    assert "gb_per_s" not in next(r for r in records if r["piece"].startswith("drnas"))
    rows = table.read_text().splitlines()
    assert len(rows) == 2 + len(records) and rows[2].startswith("| relu | 1 | ")


@pytest.mark.parametrize("argv, message", [
    (["--threads", "one"], "comma-separated integers"),
    (["--threads", "0"], "must be positive"),
    (["--repeats", "0"], "must be positive"),
])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        pieces.parse_args(argv)
    assert message in capsys.readouterr().err


def test_an_unknown_piece_names_the_known_ones():
    with pytest.raises(SystemExit, match="unknown --pieces \\['sigmoid'\\]; choose from \\['conv3x3', 'relu'"):
        pieces.main(["--pieces", "relu,sigmoid"])
