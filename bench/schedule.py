"""The default study's shrinking search as a whole: its wall time, cold and warm, and its mean search-iteration
ratio to a ReLU training step over the schedule (bench/throughput.py's whole-schedule rows).

    python bench/schedule.py [--spaces simple,complex] [--optimizer drnas] [--threads 2] [--json FILE]

For each space, `run_search` with params.yaml's search settings (the default study's schedule: its epochs,
warm start, shrinking, evaluations) runs twice in fresh processes on random data of the study's split sizes
(search_train_size + search_val_size images): first in an empty inductor cache (cold: the one fused kernel of the
full candidate set is compiled), then in the same cache (warm: what every later search of the space pays). Each
process also times ReLU ResNet-8 training steps at batch 128 (median of 5, before and after the search). Reported:
the search's wall time, the mean over epochs of (iterations' images / iterations' seconds) over ReLU's images per
second, and the same for the whole search (evaluations and checkpoints included). No data loading from disk, no
MLflow: the stage's own extra is its data and tracking (docs/benchmarks.md, search overhead).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import os  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.search.loop import run_search  # noqa: E402
from pipeline.space.models import build_resnet  # noqa: E402
from stages.common import study_params  # noqa: E402

RELU_BATCH = 128


def relu_step_s(repeats: int = 5) -> float:
    """Median seconds of a ReLU ResNet-8 SGD step at batch 128 on random data."""
    torch.manual_seed(0)
    model = build_resnet("resnet8", lambda channels: torch.nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(RELU_BATCH, 3, 32, 32), torch.randint(0, 10, (RELU_BATCH,))
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def loaders(train: int, val: int, batch: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (train + val, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (train + val,), generator=g)
    return (BatchLoader(images[:train], labels[:train], batch, shuffle=True, augment=True, drop_last=True, seed=1),
            BatchLoader(images[train:], labels[train:], batch, shuffle=True, augment=True, drop_last=True, seed=2))


def one_search(space: str, optimizer: str, threads: int, epochs: int | None = None, images: int | None = None) -> dict:
    """Runs in its own process (the inductor cache directory is the caller's environment). `epochs` and `images`
    (per split) shrink the search for a smoke test."""
    torch.set_num_threads(threads)
    params = study_params(check_paths=False)
    cfg = params.search.config(optimizer, space, 0, "cpu")
    if epochs is not None:
        cfg = cfg.model_copy(update={"epochs": epochs, "start_shrinking": min(cfg.start_shrinking or 0, epochs - 1)})
    train, val = loaders(images or params.data.search_train_size, images or params.data.search_val_size,
                         cfg.batch_size)
    relu_before = relu_step_s()
    started = time.perf_counter()
    result = run_search(cfg, train, val)
    wall = time.perf_counter() - started
    relu = statistics.mean([relu_before, relu_step_s()])
    relu_images_s = RELU_BATCH / relu
    steps = len(train)
    epoch_ratios = [(steps * cfg.batch_size / r["iterations_s"]) / relu_images_s for r in result.history]
    return {"space": space, "optimizer": optimizer, "threads": threads, "wall_s": wall,
            "relu_step_s": relu, "iterations_per_epoch": steps, "epochs": cfg.epochs,
            "mean_iteration_ratio": statistics.mean(epoch_ratios), "epoch_iteration_ratios": epoch_ratios,
            "whole_search_ratio": (cfg.epochs * steps * cfg.batch_size / wall) / relu_images_s,
            "parts_s": {key: sum(r[key] for r in result.history) for key in
                        ("iterations_s", "val_eval_s", "discretized_eval_s", "checkpoint_s")},
            "first_epoch_s": result.history[0]["epoch_time_s"], "formula": result.genotype.formula()}


def schedule_records(spaces, optimizer: str, threads: int) -> list[dict]:
    """Cold then warm, per space, each search in a fresh process sharing one new inductor cache per space."""
    records = []
    for space in spaces:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as folder:
            for state in ("cold", "warm"):
                out = Path(folder) / f"{state}.json"
                command = [sys.executable, str(Path(__file__).resolve()), "--one", space, "--optimizer", optimizer,
                           "--threads", str(threads), "--json", str(out)]
                subprocess.run(command, check=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
                record = json.loads(out.read_text()) | {"cache": state}
                print(f"  whole schedule {optimizer}-{space} ({state} cache): {record['wall_s']:.0f} s, mean "
                      f"iteration ratio {record['mean_iteration_ratio']:.2f}", flush=True)
                records.append(record)
    return records


def markdown(records: list[dict]) -> str:
    lines = ["| search | cache | wall (s) | first epoch (s) | mean iteration / ReLU step over the schedule | "
             "whole search / ReLU step | iterations / evaluations / checkpoints (s) |", "|---|---|---|---|---|---|---|"]
    for r in records:
        parts = r["parts_s"]
        lines.append(f"| {r['optimizer']}-{r['space']} | {r['cache']} | {r['wall_s']:.0f} | {r['first_epoch_s']:.0f} | "
                     f"{r['mean_iteration_ratio']:.2f} | {r['whole_search_ratio']:.2f} | "
                     f"{parts['iterations_s']:.0f} / {parts['val_eval_s'] + parts['discretized_eval_s']:.0f} / "
                     f"{parts['checkpoint_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spaces", default="simple,complex")
    p.add_argument("--optimizer", default="drnas", choices=("darts", "drnas"),
                   help="a relaxation the one kernel serves (GDAS compiles per operator)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one search in this process
    args = p.parse_args(argv)
    if args.one:
        record = one_search(args.one, args.optimizer, args.threads)
        if args.json:
            args.json.write_text(json.dumps(record))
        return [record]
    records = schedule_records(args.spaces.split(","), args.optimizer, args.threads)
    print(markdown(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return records


if __name__ == "__main__":
    main()
