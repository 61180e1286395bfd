"""Where a `dvc repro` spends its time, per stage kind: count, mean wall time, of which training, and the rest.

Reads the log of a `dvc repro` (its stdout and stderr in one file) and the run records the stages left under
results/runs (bench/stage_table.py LOG [LOG ...] [--project DIR] [--end UNIX_TIME]):
- a stage's wall time runs from the end of the previous stage's output to the end of its own: DVC's lock update,
  the process start, imports and the params check come first, then the stage's work. Its log lines carry
  HH:MM:SS stamps, so times are to the second;
- training: a retraining's epochs (its run record's `epoch_times_s`: the training steps and the test-set
  evaluation of the epochs that have one), a search's iterations (`iterations_s` summed over its epochs);
- overhead: the wall time minus that, also as a ratio to it.
Several logs are the parts of one interrupted `dvc repro` and its resumption, in order: a stage that appears in
more than one (the one running when the first was stopped, resumed from its checkpoint by the next) counts once,
with the time of all its parts. The time between a stage's last stamp and the interruption is not in any log and
is left out. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
from pathlib import Path

STAMP = re.compile(r"^(?:\d{4}/\d\d/\d\d )?(\d\d):(\d\d):(\d\d)\b")
RUNNING = re.compile(r"^Running stage '([^']+)':")


def stage_spans(log: str, end: float | None = None) -> list[dict]:
    """[{stage, start, first, last}] in run order: `start` the previous stage's last stamp (seconds of the day,
    rolled over midnight), `first`/`last` this stage's own stamps; the last stage ends at `end` if given."""
    spans, day, previous = [], 0, None
    for line in log.splitlines():
        running = RUNNING.match(line)
        if running:
            spans.append({"stage": running.group(1), "first": None, "last": None})
            continue
        stamp = STAMP.match(line)
        if not stamp or not spans:
            continue
        seconds = int(stamp[1]) * 3600 + int(stamp[2]) * 60 + int(stamp[3]) + day
        if previous is not None and seconds < previous - 12 * 3600:  # past midnight
            day += 86400
            seconds += 86400
        previous = seconds
        span = spans[-1]
        span["first"] = seconds if span["first"] is None else span["first"]
        span["last"] = seconds
    for before, span in zip([None] + spans[:-1], spans):
        span["start"] = before["last"] if before else span["first"]
    if end is not None and spans:
        local = dt.datetime.fromtimestamp(end)
        seconds = local.hour * 3600 + local.minute * 60 + local.second + day
        spans[-1]["last"] = max(spans[-1]["last"], seconds)
    return spans


def kind_of(stage: str) -> str:
    return stage.split("@")[0]


def training_seconds(project: Path, stage: str) -> float | None:
    """Training time of a search or retraining stage from its run record; None for other stages."""
    kind, _, item = stage.partition("@")
    runs = project / "results" / "runs"
    if kind == "search":
        optimizer, space, seed = item.rsplit("-", 2)
        record = json.loads((runs / "search" / f"{optimizer}-{space}-s{seed}.json").read_text())
        return sum(epoch["iterations_s"] for epoch in record["epochs"])
    if kind.startswith("evaluate-"):
        activation, network, seed = item.rsplit("-", 2)
        record = json.loads((runs / "evaluate" / activation / network / f"seed{seed}.json").read_text())
        return sum(record["epoch_times_s"])
    return None


def stage_table(spans: list[dict], project: Path) -> list[dict]:
    stages: dict[str, dict] = {}
    for span in spans:  # a stage's spans from several logs add up (an interrupted stage and its resumption)
        times = stages.setdefault(span["stage"], {"wall": 0, "startup": 0})
        times["wall"] += span["last"] - span["start"]
        times["startup"] += span["first"] - span["start"]
    kinds: dict[str, list[dict]] = {}
    for stage, times in stages.items():
        kinds.setdefault(kind_of(stage), []).append(times | {"training": training_seconds(project, stage)})
    rows = []
    for kind, stages in kinds.items():
        trained = [s["training"] for s in stages if s["training"] is not None]
        wall = statistics.mean(s["wall"] for s in stages)
        training = statistics.mean(trained) if trained else None
        rows.append({"kind": kind, "count": len(stages), "total_s": sum(s["wall"] for s in stages),
                     "wall_s": wall, "startup_s": statistics.mean(s["startup"] for s in stages),
                     "training_s": training,
                     "overhead_ratio": (wall - training) / training if training else None})
    return rows


def markdown(rows: list[dict]) -> str:
    def num(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"
    lines = ["| stage kind | count | total wall (min) | mean wall (s) | of which start-up (s) | of which training (s) "
             "| overhead / training |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['kind']} | {row['count']} | {num(row['total_s'] / 60)} | {num(row['wall_s'])} | "
                     f"{num(row['startup_s'])} | {num(row['training_s'])} | {num(row['overhead_ratio'], 2)} |")
    total = sum(row["total_s"] for row in rows)
    lines.append(f"| all | {sum(row['count'] for row in rows)} | {num(total / 60)} | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, nargs="+", help="the log of a dvc repro, or of its parts in order")
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--end", type=float, help="unix time the repro ended (the last stage's end)")
    args = parser.parse_args()
    spans = [span for i, log in enumerate(args.logs)
             for span in stage_spans(log.read_text(), args.end if i == len(args.logs) - 1 else None)]
    print(markdown(stage_table(spans, args.project)))


if __name__ == "__main__":
    main()
