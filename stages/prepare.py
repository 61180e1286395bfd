"""Stage `prepare`: the raw CIFAR-10 (data/raw/, the download stage's output) -> the configured subsets and search
split, as two small files, and prepared.json, which names the data (`data`: 'CIFAR-10', 'CIFAR-10 (JPEG q75 copy)').

data/prepared/cifar10.pt holds uint8 images and int64 labels of the balanced train/test subsets (all later stages
load it in a second); data/prepared/search_split.pt holds two disjoint index sets into that training subset
(network weights / architecture). Two files, so that changing only the search split leaves cifar10.pt
byte-identical and the evaluation stages, which read only it, are not rerun.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.data.cifar import DataError, balanced_subset, load_cifar10, split_indices
from pipeline.data.download import data_name
from stages.common import PREPARED_DATA, RAW_DATA, ROOT, SEARCH_SPLIT, log, run, stage_run, start, write_json

STAGE = "prepare"


def raw_source() -> Path:
    entries = sorted(RAW_DATA.iterdir()) if RAW_DATA.is_dir() else []
    if len(entries) != 1:
        raise DataError(f"{RAW_DATA} should hold one archive or folder (the download stage's output), found "
                        f"{len(entries)}; run `dvc repro download`")
    return entries[0]


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    params = start(STAGE)
    cfg = params.data
    raw = raw_source()
    name = data_name(raw)
    with stage_run(params, STAGE, {"data": name}, {"data": cfg.model_dump()}) as mlflow_run:
        data = load_cifar10(raw, ROOT / cfg.cache_dir)
        train = balanced_subset(data.train_labels, cfg.train_size or len(data.train_labels), cfg.seed)
        test = balanced_subset(data.test_labels, cfg.test_size or len(data.test_labels), cfg.seed)
        weights, arch = split_indices(len(train), cfg.search_train_size, cfg.search_val_size, cfg.seed)
        PREPARED_DATA.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"train_images": data.train_images[train].clone(), "train_labels": data.train_labels[train].clone(),
                    "test_images": data.test_images[test].clone(), "test_labels": data.test_labels[test].clone(),
                    "classes": list(data.classes)}, PREPARED_DATA)
        torch.save({"weights": weights, "arch": arch}, SEARCH_SPLIT)
        summary = {"data": name, "source": raw.name, "classes": list(data.classes), "train_images": len(train),
                   "test_images": len(test), "search_weight_images": len(weights), "search_arch_images": len(arch),
                   "train_per_class": torch.bincount(data.train_labels[train]).tolist()}
        write_json(PREPARED_DATA.parent / "prepared.json", summary)
        mlflow_run.log_metrics({k: v for k, v in summary.items() if isinstance(v, int)})
        mlflow_run.log_dict(summary, "prepared.json")
        log.info("prepared %d training and %d test images (search: %d + %d)", len(train), len(test), len(weights),
                 len(arch))


if __name__ == "__main__":
    run(main)
