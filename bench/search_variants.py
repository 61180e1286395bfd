"""Search variants of the default study, side by side: what each finds, its depth check and its ResNet-20 accuracy.

    python bench/search_variants.py [--variants default,shrink-from-1,no-kl,resnet20] [--spaces simple,complex]
                                    [--seeds 0,1] [--out reports/search_variants] [--workers 2] [--report-only]

Every variant is the default study's DrNAS search (params.yaml, search seed 0, the prepared search splits) with
one change (VARIANTS):
- `shrink-from-1`: progressive shrinking from epoch 1, right after the ReLU warm start (the default before
  2026-12-02; the default now starts at epoch 2, as GRAFS);
- `no-kl`: no regularizer towards the Dirichlet prior (GRAFS's architecture loss has none), Adam's weight decay
  on the alphas as DARTS;
- `resnet20`: the supernet is ResNet-20, the network the claim is about, on 37% of the images per split so that
  the search takes about the wall time of the default one on ResNet-8 (a ResNet-20 step costs ~2.7x).
Each found function then gets the depth check (discretize's, params.yaml's networks) and is retrained from scratch
on ResNet-20 at the default budget under the one retraining rule, for --seeds (bench/budget_ranking.py's
`retrain`; a function several variants found is retrained once). Runs append to searches.jsonl and retrains.jsonl (a rerun skips what is there); the table is table.md.
Needs the prepared data (dvc repro prepare).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.budget_ranking import retrain  # noqa: E402
from bench.diagnosis import append_record, read_records  # noqa: E402
from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.search.loop import SearchConfig, run_search  # noqa: E402
from pipeline.space.genotype import Genotype  # noqa: E402
from stages.common import search_loaders, study_params  # noqa: E402
from stages.discretize import run_depth_check  # noqa: E402

# name: (changes to the search config, share of each search split's images)
VARIANTS = {
    "default": ({}, 1.0),
    "shrink-from-1": ({"start_shrinking": 1}, 1.0),
    "no-kl": ({"drnas": {"regularizer": "none"}}, 1.0),
    "resnet20": ({"network": "resnet20"}, 0.37),
}


def subset(loader: BatchLoader, share: float) -> BatchLoader:
    """The first `share` of a loader's images (the split is already a random draw), same settings."""
    n = max(loader.batch_size, round(share * len(loader.labels)))
    return BatchLoader(loader.images[:n], loader.labels[:n], loader.batch_size, shuffle=loader.shuffle,
                       augment=loader.augment, drop_last=loader.drop_last, device=loader.device, seed=loader.seed)


def variant_config(params, variant: str, space: str) -> SearchConfig:
    """The default study's DrNAS search of `space` (search seed 0) with the variant's changes (nested sections
    updated key by key), validated as any search config."""
    base = params.search.config("drnas", space, params.search_seed(0), "cpu").model_dump()
    changes = VARIANTS[variant][0]
    return SearchConfig.model_validate(base | {k: base[k] | v if isinstance(v, dict) else v
                                               for k, v in changes.items()})


def search_one(variant: str, space: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    params = study_params()
    cfg, share = variant_config(params, variant, space), VARIANTS[variant][1]
    train, val = (subset(loader, share) for loader in search_loaders(cfg.batch_size, cfg.seed, torch.device("cpu")))
    started = time.perf_counter()
    result = run_search(cfg, train, val)
    seconds = time.perf_counter() - started
    depth = run_depth_check(params, result.genotype, 0, torch.device("cpu"))
    selected = result.history[result.selected_epoch - 1]
    return {"variant": variant, "space": space, "network": cfg.network, "images": len(train.labels),
            "search_s": seconds, "genotype": result.genotype.to_dict(), "formula": result.genotype.formula(),
            "selected_epoch": result.selected_epoch, "discretized_val_top1": selected["discretized_val_top1"],
            "depth": depth["summary"], "depth_flagged": depth["flagged"]}


def retrain_one(formula: str, genotype: dict, seed: int, threads: int) -> dict:
    record = retrain(Genotype.from_dict(genotype), "resnet20", seed, "short", threads)
    return {"formula": formula, "seed": seed, "status": record["status"], "top1": record["top1"]}


def markdown(searches: list[dict], retrains: list[dict]) -> str:
    """One row per search; a function found by several variants is retrained once (by its formula)."""
    lines = ["| variant | space | supernet (images per split) | search (s) | found | depth check | "
             "ResNet-20 top-1 (seeds) | mean |", "|---|---|---|---|---|---|---|---|"]
    for s in searches:
        runs = sorted((r for r in retrains if r["formula"] == s["formula"]), key=lambda r: r["seed"])
        tops = " / ".join(f"{r['top1']:.2f}" if r["status"] == "ok" else r["status"] for r in runs) or "-"
        ok = [r["top1"] for r in runs if r["status"] == "ok"]
        mean = f"{statistics.mean(ok):.2f}" if ok else "-"
        lines.append(f"| {s['variant']} | {s['space']} | {s['network']} ({s['images']}) | {s['search_s']:.0f} | "
                     f"`{s['formula']}` | {s['depth']} | {tops} | {mean} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--spaces", default="simple,complex")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", default=str(ROOT / "reports" / "search_variants"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    searches_log, retrains_log = out / "searches.jsonl", out / "retrains.jsonl"
    threads = max(1, (torch.get_num_threads() or 2) // args.workers)
    if not args.report_only:
        done = {(s["variant"], s["space"]) for s in read_records(searches_log)}
        todo = [(v, s) for v in args.variants.split(",") for s in args.spaces.split(",") if (v, s) not in done]
        with ProcessPoolExecutor(args.workers) as pool:
            for future in [pool.submit(search_one, v, s, threads) for v, s in todo]:
                record = future.result()
                append_record(searches_log, record)
                print(f"{record['variant']}-{record['space']}: {record['formula']} ({record['search_s']:.0f} s, "
                      f"depth {record['depth']})", flush=True)
            done = {(r["formula"], r["seed"]) for r in read_records(retrains_log)}
            found = {s["formula"]: s["genotype"] for s in read_records(searches_log)}
            todo = [(f, g, int(seed)) for f, g in found.items() for seed in args.seeds.split(",")
                    if (f, int(seed)) not in done]
            for future in [pool.submit(retrain_one, f, g, seed, threads) for f, g, seed in todo]:
                record = future.result()
                append_record(retrains_log, record)
                print(f"{record['formula']} s{record['seed']}: {record['status']} {record['top1']:.2f}", flush=True)
    (out / "table.md").write_text(markdown(read_records(searches_log), read_records(retrains_log)))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
