"""Stage `prepare`: CIFAR-10 from data.source -> the configured subsets and search split, as two small files.

data/prepared/cifar10.pt holds uint8 images and int64 labels of the balanced train/test subsets (all later stages
load it in a second); data/prepared/search_split.pt holds two disjoint index sets into that training subset
(network weights / architecture). Two files, so that changing only the search split leaves cifar10.pt
byte-identical and the evaluation stages, which read only it, are not rerun.

`python -m stages.prepare --download DIR` is the one-off torchvision download (needs internet); point
data.source at the folder it prints, because DVC can only track a local path.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.data.cifar import balanced_subset, download_with_torchvision, load_cifar10, split_indices
from stages.common import PREPARED_DATA, ROOT, SEARCH_SPLIT, log, run, stage_run, start, write_json

STAGE = "prepare"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--download", metavar="DIR", help="download CIFAR-10 with torchvision into DIR and exit")
    args = parser.parse_args(argv)
    if args.download:
        folder = download_with_torchvision(Path(args.download))
        print(f"downloaded; now set in params.yaml:  data.source: {folder}")
        return
    params = start(STAGE)
    cfg = params.data
    with stage_run(params, STAGE, {}, {"data": cfg.model_dump()}) as mlflow_run:
        data = load_cifar10(params.source_path(), ROOT / cfg.cache_dir)
        train = balanced_subset(data.train_labels, cfg.train_size or len(data.train_labels), cfg.seed)
        test = balanced_subset(data.test_labels, cfg.test_size or len(data.test_labels), cfg.seed)
        weights, arch = split_indices(len(train), cfg.search_train_size, cfg.search_val_size, cfg.seed)
        PREPARED_DATA.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"train_images": data.train_images[train].clone(), "train_labels": data.train_labels[train].clone(),
                    "test_images": data.test_images[test].clone(), "test_labels": data.test_labels[test].clone(),
                    "classes": list(data.classes)}, PREPARED_DATA)
        torch.save({"weights": weights, "arch": arch}, SEARCH_SPLIT)
        summary = {"source": str(cfg.source), "classes": list(data.classes), "train_images": len(train),
                   "test_images": len(test), "search_weight_images": len(weights), "search_arch_images": len(arch),
                   "train_per_class": torch.bincount(data.train_labels[train]).tolist()}
        write_json(PREPARED_DATA.parent / "prepared.json", summary)
        mlflow_run.log_metrics({k: v for k, v in summary.items() if isinstance(v, int)})
        mlflow_run.log_dict(summary, "prepared.json")
        log.info("prepared %d training and %d test images (search: %d + %d)", len(train), len(test), len(weights),
                 len(arch))


if __name__ == "__main__":
    run(main)
