"""CIFAR-10 loading with a decoded-tensor cache, and deterministic splits and subsets.

load_cifar10 reads a local copy: what the download stage leaves in data/raw (the original archive), a
cifar-10-batches-py folder, an image-folder tree, or an archive of one (see pipeline.data.sources). Decoding 60,000 JPEGs takes a while,
so the decoded tensors are cached in one file per source and reused while the source is unchanged.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import torch

from pipeline.data.sources import (
    ARCHIVE_SUFFIXES, BATCHES_FOLDER, HOW_TO_FIX, IMAGE_SIZE, CifarData, DataError, is_archive, read_source,
)

__all__ = ["CifarData", "DataError", "balanced_subset", "load_cifar10", "split_indices"]

# Bump when the cached content or its meaning changes, so stale caches are rebuilt rather than trusted.
CACHE_FORMAT_VERSION = 1


def load_cifar10(source: str | Path, cache_dir: str | Path) -> CifarData:
    """Load CIFAR-10 from source, decoding it once and then reading the cache in cache_dir.

    source: a folder that is or holds cifar-10-batches-py, a folder of train/<class>/* and test/<class>/* (optionally one level down),
    or a .tar.gz/.tgz/.tar/.zip archive of such a folder. Raises DataError, before any long work where it can.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the data cache folder {cache_dir} ({error}); set data.cache_dir "
                        f"in params.yaml to a writable folder") from None
    path = locate_source(source)
    fingerprint = source_fingerprint(path)
    cache_file = cache_dir / f"cifar10-{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.pt"
    data = read_cache(cache_file, fingerprint)
    if data is None:
        data = read_source(path)
        write_cache(cache_file, data, fingerprint)
    return data


def locate_source(source: str | Path) -> Path:
    """Turn a local source into the path to read; check that it exists and is a form read_source knows."""
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"data source {path} does not exist; {HOW_TO_FIX}")
    if path.is_file() and not is_archive(path):
        raise DataError(f"data source {path} is a file but not a {'/'.join(ARCHIVE_SUFFIXES)} archive; {HOW_TO_FIX}")
    if path.is_dir() and (path / BATCHES_FOLDER).is_dir():
        return path / BATCHES_FOLDER
    return path


def source_fingerprint(path: Path) -> str:
    """Path, size and modification time of the source; for a folder, over all its files and their names.

    Names count too: moving an image to another class folder changes labels but no size or time.
    """
    if path.is_file():
        stat = path.stat()
        return f"v{CACHE_FORMAT_VERSION}|{path}|file|{stat.st_size}|{stat.st_mtime_ns}"
    names, total_size, latest = hashlib.sha256(), 0, 0
    for directory, subdirs, filenames in os.walk(path):
        subdirs.sort()  # os.walk order is the file system's; sorting makes the name hash reproducible
        for name in sorted(filenames):
            file = os.path.join(directory, name)
            stat = os.stat(file)
            names.update(os.path.relpath(file, path).encode() + b"\0")
            total_size, latest = total_size + stat.st_size, max(latest, stat.st_mtime_ns)
    return f"v{CACHE_FORMAT_VERSION}|{path}|folder|{names.hexdigest()}|{total_size}|{latest}"


def read_cache(cache_file: Path, fingerprint: str) -> CifarData | None:
    """The cached data if cache_file is intact and was made from this very source, else None."""
    if not cache_file.exists():
        return None
    try:
        content = torch.load(cache_file, map_location="cpu", weights_only=True)
        if not isinstance(content, dict) or content.get("fingerprint") is None:
            raise ValueError("not a CIFAR-10 cache file")
        if content["fingerprint"] != fingerprint:
            return None  # the source changed since; the rebuild overwrites this file
        data = CifarData(content["train_images"], content["train_labels"], content["test_images"],
                         content["test_labels"], tuple(content["classes"]))
        check_consistent(data)
        return data
    except Exception as error:  # any damage (truncated zip, wrong keys, bad shapes) means: rebuild, never trust
        warnings.warn(f"discarding unreadable data cache {cache_file} ({error}); decoding the source again",
                      stacklevel=3)
        cache_file.unlink(missing_ok=True)
        return None


def check_consistent(data: CifarData) -> None:
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if images.dtype != torch.uint8 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{split} images are {images.dtype} {tuple(images.shape)}, not uint8 (N, 3, 32, 32)")
        if labels.dtype != torch.int64 or labels.shape != (len(images),):
            raise ValueError(f"{split} labels are {labels.dtype} {tuple(labels.shape)}, not int64 ({len(images)},)")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(data.classes)):
            raise ValueError(f"{split} labels fall outside the {len(data.classes)} classes")


def write_cache(cache_file: Path, data: CifarData, fingerprint: str) -> None:
    """Save atomically: write a temporary file next to the cache and rename it, so a kill leaves no half file."""
    content = {
        "fingerprint": fingerprint, "classes": list(data.classes),
        "train_images": data.train_images, "train_labels": data.train_labels,
        "test_images": data.test_images, "test_labels": data.test_labels,
    }
    handle, temporary = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes it owner-only; the cache is no secret and may be shared
        with os.fdopen(handle, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, cache_file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def split_indices(n: int, first: int, second: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random sets of indices into range(n), of sizes first and second, each sorted ascending.

    Used e.g. to cut the 50,000 training images into 25,000 for search weights and 25,000 for architecture
    parameters. The same (n, first, second, seed) always gives the same sets, on any device.
    """
    if min(n, first, second) < 0 or first + second > n:
        raise ValueError(f"cannot take {first} + {second} disjoint indices out of {n} items; choose split sizes "
                         f"that are non-negative and sum to at most {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:first].sort().values, order[first:first + second].sort().values


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of `size` items drawn at random with the classes as equally represented as possible.

    A class with fewer items than its share gives all it has and the others share the rest. size >= len(labels)
    returns every index. Deterministic given (labels, size, seed).
    """
    labels = labels.cpu()
    if size < 0:
        raise ValueError(f"subset size must be non-negative, got {size}")
    if size >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    members = {int(c): torch.nonzero(labels == c).flatten() for c in torch.unique(labels)}
    # Fill the smallest classes first so a short class's unused share passes to the larger ones.
    by_count = sorted(members, key=lambda c: (len(members[c]), c))
    remaining, chosen = size, []
    for position, label in enumerate(by_count):
        quota = min(len(members[label]), -(-remaining // (len(by_count) - position)))  # ceil division
        pick = torch.randperm(len(members[label]), generator=generator)[:quota]
        chosen.append(members[label][pick])
        remaining -= quota
    return torch.cat(chosen).sort().values
