"""Tests for CIFAR-10 loading (pipeline.data.cifar, pipeline.data.sources) and batch augmentation (pipeline.data.augment)."""
from __future__ import annotations

import os
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pipeline.data.cifar as data_module
from pipeline.data.augment import CIFAR10_MEAN, CIFAR10_STD, BatchLoader
from pipeline.data.cifar import DataError, balanced_subset, load_cifar10, split_indices
from pipeline.data.sources import HOW_TO_FIX

# Deliberately not alphabetical, so the test sees the loader sort them into label order.
CLASSES = ("truck", "airplane", "ship", "bird", "horse", "cat", "frog", "deer", "dog", "automobile")
SORTED = tuple(sorted(CLASSES))


def pattern(label: int, index: int, split: str) -> np.ndarray:
    """A (32, 32, 3) image that is unique per (class, index, split) and not symmetric, to catch transposes."""
    y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    red = np.full((32, 32), label * 20 + index + (5 if split == "test" else 0))
    return np.stack([red, y * 4 + 1, x * 7 % 256], axis=-1).astype(np.uint8)


def make_tree(root: Path, top: str = "cifar10", n_train: int = 3, n_test: int = 2, classes=CLASSES) -> dict:
    """Write PNGs (lossless, so pixels can be compared exactly); return the expected tensors in label order."""
    expected = {}
    for split, count in (("train", n_train), ("test", n_test)):
        images, labels = [], []
        for name in classes:
            label = SORTED.index(name)
            folder = root / top / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(pattern(label, index, split)).save(folder / f"{index:04d}.png")
        for label, name in enumerate(SORTED):
            if name in classes:
                images += [pattern(label, index, split) for index in range(count)]
                labels += [label] * count
        stacked = np.stack(images) if images else np.zeros((0, 32, 32, 3), dtype=np.uint8)
        expected[split] = (torch.from_numpy(stacked).permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.int64))
    return expected


def pack(folder: Path, archive: Path) -> Path:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted(folder.rglob("*")):
                zipped.write(path, path.relative_to(folder).as_posix())
    else:
        with tarfile.open(archive, "w:gz" if archive.name.endswith(("gz", "tgz")) else "w") as tarred:
            for child in sorted(folder.iterdir()):
                tarred.add(child, child.name)
    return archive


def assert_matches(data, expected: dict, classes=SORTED) -> None:
    assert data.classes == classes
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert images.dtype == torch.uint8 and images.shape == expected[split][0].shape
        assert labels.dtype == torch.int64
        assert torch.equal(images, expected[split][0])
        assert torch.equal(labels, expected[split][1])


# ------------------------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("kind", ["tree.tar.gz", "tree.tgz", "tree.tar", "tree.zip", "folder"])
@pytest.mark.parametrize("top", ["cifar10", ""])
def test_image_tree_loads_with_exact_pixels_and_alphabetical_labels(tmp_path, kind, top):
    expected = make_tree(tmp_path / "src", top=top)
    source = tmp_path / "src" if kind == "folder" else pack(tmp_path / "src", tmp_path / kind)
    data = load_cifar10(source, tmp_path / "cache")
    assert_matches(data, expected)
    assert data.train_images.shape == (30, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)


def test_grayscale_images_become_rgb(tmp_path):
    make_tree(tmp_path / "src")
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray, mode="L").save(tmp_path / "src/cifar10/train/cat/0000.png")
    data = load_cifar10(tmp_path / "src", tmp_path / "cache")
    first_cat = data.train_images[data.train_labels == SORTED.index("cat")][0]
    assert all(torch.equal(first_cat[channel], torch.from_numpy(gray)) for channel in range(3))


def test_cache_is_written_once_and_reused_without_reading_the_source(tmp_path, monkeypatch):
    expected = make_tree(tmp_path / "src")
    archive = pack(tmp_path / "src", tmp_path / "tree.tar.gz")
    load_cifar10(archive, tmp_path / "cache")
    cache_files = list((tmp_path / "cache").iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".pt"  # no temporary file left behind
    written = cache_files[0].stat().st_mtime_ns

    def must_not_decode(path):
        raise AssertionError(f"decoded {path} although a valid cache exists")

    monkeypatch.setattr(data_module, "read_source", must_not_decode)
    assert_matches(load_cifar10(archive, tmp_path / "cache"), expected)
    assert cache_files[0].stat().st_mtime_ns == written


def test_changed_source_is_decoded_again(tmp_path, monkeypatch):
    make_tree(tmp_path / "src")
    archive = pack(tmp_path / "src", tmp_path / "tree.zip")
    load_cifar10(archive, tmp_path / "cache")
    decoded = []
    real_read = data_module.read_source
    monkeypatch.setattr(data_module, "read_source", lambda path: decoded.append(path) or real_read(path))
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_cifar10(archive, tmp_path / "cache")
    assert decoded == [archive.resolve()]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the stale cache was replaced, not kept alongside


@pytest.mark.parametrize("damage", [b"garbage, not a torch file", None])
def test_corrupt_cache_is_discarded_with_a_warning_and_rebuilt(tmp_path, damage):
    expected = make_tree(tmp_path / "src")
    load_cifar10(tmp_path / "src", tmp_path / "cache")
    cache_file = next((tmp_path / "cache").iterdir())
    if damage is None:  # a well-formed torch file for this source, but without the tensors
        fingerprint = data_module.source_fingerprint((tmp_path / "src").resolve())
        torch.save({"fingerprint": fingerprint, "classes": ["a"]}, cache_file)
    else:
        cache_file.write_bytes(damage)
    with pytest.warns(UserWarning, match="discarding unreadable data cache"):
        assert_matches(load_cifar10(tmp_path / "src", tmp_path / "cache"), expected)
    assert_matches(load_cifar10(tmp_path / "src", tmp_path / "cache"), expected)  # the rebuilt cache is sound


def write_batches(folder: Path, counts=(2, 2, 2, 2, 2), n_test: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    content = {}
    for name, count in zip(names, list(counts) + [n_test]):
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, count).tolist(), b"batch_label": name.encode()}
        content[name] = batch
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [name.encode() for name in SORTED], b"num_vis": 3072}, file)
    return content


@pytest.mark.parametrize("point_at_parent", [True, False])
def test_pickled_batches_folder_loads(tmp_path, point_at_parent):
    batches = write_batches(tmp_path / "root" / "cifar-10-batches-py")
    source = tmp_path / "root" if point_at_parent else tmp_path / "root" / "cifar-10-batches-py"
    data = load_cifar10(source, tmp_path / "cache")
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    assert data.classes == SORTED
    assert data.train_images.shape == (10, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    assert torch.equal(data.train_images.reshape(10, -1), torch.from_numpy(np.concatenate([b[b"data"] for b in train])))
    assert data.train_labels.tolist() == sum((b[b"labels"] for b in train), [])
    assert torch.equal(data.test_images.reshape(3, -1), torch.from_numpy(batches["test_batch"][b"data"]))
    # Row layout is channel-major: the first 1024 values are the red plane.
    assert torch.equal(data.test_images[0, 0].flatten(), torch.from_numpy(batches["test_batch"][b"data"][0, :1024]))


def test_pickled_batch_with_foreign_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({b"data": print, b"labels": []}, file)  # any global besides numpy's is refused
    with pytest.raises(DataError, match="data_batch_3.*refusing to load builtins.print"):
        load_cifar10(folder, tmp_path / "cache")


# ------------------------------------------------------------------------------------------------- errors
def expect_error(source, cache_dir, *fragments) -> str:
    with pytest.raises(DataError) as caught:
        load_cifar10(source, cache_dir)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_path_is_named_with_the_fix(tmp_path):
    expect_error(tmp_path / "nowhere.tar.gz", tmp_path / "cache", str(tmp_path / "nowhere.tar.gz"),
                 "does not exist", "set data.source in params.yaml")


def test_plain_file_is_not_an_archive(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    expect_error(tmp_path / "notes.txt", tmp_path / "cache", str(tmp_path / "notes.txt"), "archive", "data.source")


@pytest.mark.parametrize("packed", [False, True])
def test_tree_without_test_split(tmp_path, packed):
    make_tree(tmp_path / "src", n_test=0)
    for folder in (tmp_path / "src/cifar10/test").iterdir():
        folder.rmdir()
    (tmp_path / "src/cifar10/test").rmdir()
    source = pack(tmp_path / "src", tmp_path / "tree.tar.gz") if packed else tmp_path / "src"
    expect_error(source, tmp_path / "cache", str(source), "no cifar10/test/ split", "data.source")


def test_tree_without_any_split(tmp_path):
    (tmp_path / "src/images").mkdir(parents=True)
    expect_error(tmp_path / "src", tmp_path / "cache", str(tmp_path / "src"), "no train/ or test/", "data.source")


def test_class_missing_from_test(tmp_path):
    make_tree(tmp_path / "src")
    for image in (tmp_path / "src/cifar10/test/truck").iterdir():
        image.unlink()
    (tmp_path / "src/cifar10/test/truck").rmdir()
    archive = pack(tmp_path / "src", tmp_path / "tree.zip")
    expect_error(archive, tmp_path / "cache", str(archive), "only in train: ['truck']", "data.source")


def test_empty_class_folder(tmp_path):
    make_tree(tmp_path / "src")
    for image in (tmp_path / "src/cifar10/train/cat").iterdir():
        image.unlink()
    expect_error(tmp_path / "src", tmp_path / "cache", "cifar10/train/cat/ holds no images")


@pytest.mark.parametrize("name", ["tree.tar.gz", "tree.zip"])
def test_truncated_archive(tmp_path, name):
    make_tree(tmp_path / "src")
    archive = pack(tmp_path / "src", tmp_path / name)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    expect_error(archive, tmp_path / "cache", str(archive), "corrupt or truncated")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("content", [b"this is not an image", "half a jpeg"])
def test_undecodable_image_is_named(tmp_path, content):
    make_tree(tmp_path / "src")
    bad = tmp_path / "src/cifar10/train/dog/0001.png"
    if content == "half a jpeg":
        Image.fromarray(pattern(0, 0, "train")).save(tmp_path / "whole.jpg")
        content = (tmp_path / "whole.jpg").read_bytes()[:300]
    bad.write_bytes(content)
    archive = pack(tmp_path / "src", tmp_path / "tree.tar.gz")
    expect_error(archive, tmp_path / "cache", "cannot decode image cifar10/train/dog/0001.png", str(archive))


def test_wrong_image_size_is_named(tmp_path):
    make_tree(tmp_path / "src")
    Image.new("RGB", (31, 32)).save(tmp_path / "src/cifar10/test/ship/0000.png")
    expect_error(tmp_path / "src", tmp_path / "cache", "cifar10/test/ship/0000.png", "31x32", "32x32")


def test_a_missing_source_says_how_to_get_the_data_and_no_longer_offers_torchvision(tmp_path):
    with pytest.raises(DataError) as caught:
        load_cifar10("torchvision", tmp_path / "cache")  # once a download keyword; now just a missing path
    message = str(caught.value)
    assert "does not exist" in message
    for fragment in ("data.source", "URL of the original CIFAR-10", "cifar-10-batches-py", "ACTSEARCH_CIFAR10"):
        assert fragment in message
    assert "torchvision" not in HOW_TO_FIX


# ------------------------------------------------------------------------------------------ splits, subsets
def test_split_indices_are_disjoint_sorted_and_deterministic():
    first, second = split_indices(100, 30, 50, seed=7)
    assert len(first) == 30 and len(second) == 50
    assert not set(first.tolist()) & set(second.tolist())
    assert all(0 <= i < 100 for i in first.tolist() + second.tolist())
    assert torch.equal(first, first.sort().values)
    again = split_indices(100, 30, 50, seed=7)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, split_indices(100, 30, 50, seed=8)[0])
    whole = torch.cat(split_indices(10, 4, 6, seed=0)).sort().values
    assert torch.equal(whole, torch.arange(10))


def test_split_indices_rejects_sizes_beyond_n():
    with pytest.raises(ValueError, match="30 \\+ 80 .* 100"):
        split_indices(100, 30, 80, seed=0)


def test_balanced_subset_is_balanced_and_deterministic():
    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(0))]
    subset = balanced_subset(labels, 23, seed=3)
    counts = torch.bincount(labels[subset], minlength=10)
    assert len(set(subset.tolist())) == 23 and counts.min() >= 2 and counts.max() <= 3
    assert torch.equal(subset, balanced_subset(labels, 23, seed=3))
    assert not torch.equal(subset, balanced_subset(labels, 23, seed=4))
    assert torch.equal(balanced_subset(labels, 500, seed=0), torch.arange(500))
    assert torch.equal(balanced_subset(labels, 10**6, seed=0), torch.arange(500))


def test_balanced_subset_gives_a_short_class_all_it_has():
    labels = torch.tensor([0] + [1] * 20 + [2] * 20)
    counts = torch.bincount(labels[balanced_subset(labels, 13, seed=0)], minlength=3).tolist()
    assert counts == [1, 6, 6]


# ------------------------------------------------------------------------------------------------ batches
def toy_images(count: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count) % 10


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((x.cpu() * std + mean) * 255).round().to(torch.uint8)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_batch_count_follows_drop_last():
    images, labels = toy_images(20)
    assert len(BatchLoader(images, labels, 8, shuffle=True, augment=False)) == 3
    assert len(BatchLoader(images, labels, 8, shuffle=True, augment=False, drop_last=True)) == 2
    sizes = [len(y) for _, y in BatchLoader(images, labels, 8, shuffle=True, augment=True, drop_last=True)]
    assert sizes == [8, 8]


def test_plain_loader_keeps_dataset_order_and_normalizes():
    images, labels = toy_images(20)
    x, y = collect(BatchLoader(images, labels, 6, shuffle=False, augment=False))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (20, 3, 32, 32)
    assert torch.equal(y, labels) and torch.equal(unnormalize(x), images)
    # The CIFAR-10 mean pixel maps to about zero.
    mean_pixel = (torch.tensor(CIFAR10_MEAN) * 255).view(1, 3, 1, 1).expand(1, 3, 32, 32).round().to(torch.uint8)
    centred, _ = next(iter(BatchLoader(mean_pixel, torch.zeros(1, dtype=torch.int64), 1, shuffle=False,
                                       augment=False)))
    assert centred.abs().max() < 0.01


def crop_flip_candidates(image: torch.Tensor) -> list[torch.Tensor]:
    padded = F.pad(image, (4, 4, 4, 4))
    crops = [padded[:, top:top + 32, left:left + 32] for top in range(9) for left in range(9)]
    return crops + [crop.flip(-1) for crop in crops]


def test_augmentation_is_a_padded_crop_and_flip_of_each_image_with_labels_kept():
    images, labels = toy_images(24)
    x, y = collect(BatchLoader(images, labels, 10, shuffle=False, augment=True, seed=5))
    assert x.shape == images.shape and torch.equal(y, labels)
    transforms = []
    for image, result in zip(images, unnormalize(x)):
        matches = [index for index, candidate in enumerate(crop_flip_candidates(image))
                   if torch.equal(result, candidate)]
        assert matches, "an augmented image is no padded crop or flip of its source"
        transforms.append(matches[0])
    identity = 4 * 9 + 4  # centred crop, not flipped
    assert sum(index != identity for index in transforms) >= 20
    assert any(index >= 81 for index in transforms) and any(index < 81 for index in transforms)


def test_same_seed_and_epoch_give_identical_batches_and_epochs_differ():
    images, labels = toy_images(20)

    def epoch_data(seed: int, epoch: int):
        loader = BatchLoader(images, labels, 7, shuffle=True, augment=True, seed=seed)
        loader.set_epoch(epoch)
        return collect(loader)

    x, y = epoch_data(1, 3)
    x_again, y_again = epoch_data(1, 3)
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert not torch.equal(y, epoch_data(1, 4)[1])
    assert not torch.equal(y, epoch_data(2, 3)[1])
    assert sorted(y.tolist()) == sorted(labels.tolist())  # a permutation: every image once per epoch


def test_passes_advance_the_epoch_and_set_epoch_replays_one():
    images, labels = toy_images(20)
    loader = BatchLoader(images, labels, 7, shuffle=True, augment=True, seed=0)
    first, second = collect(loader), collect(loader)
    assert loader.epoch == 2 and not torch.equal(first[1], second[1])
    loader.set_epoch(1)
    replay = collect(loader)
    assert torch.equal(replay[0], second[0]) and torch.equal(replay[1], second[1])


def test_channels_last_changes_layout_only():
    images, labels = toy_images(12)
    plain = collect(BatchLoader(images, labels, 5, shuffle=True, augment=True, seed=9))
    loader = BatchLoader(images, labels, 5, shuffle=True, augment=True, seed=9, channels_last=True)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    loader.set_epoch(0)
    assert torch.equal(collect(loader)[0], plain[0])


def test_loader_rejects_bad_inputs():
    images, labels = toy_images(4)
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.float(), labels, 2, shuffle=False, augment=False)
    with pytest.raises(ValueError, match="labels"):
        BatchLoader(images, labels[:3], 2, shuffle=False, augment=False)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(images, labels, 0, shuffle=False, augment=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    images, labels = toy_images(30)
    cpu = collect(BatchLoader(images, labels, 8, shuffle=True, augment=True, seed=4))
    cuda = collect(BatchLoader(images, labels, 8, shuffle=True, augment=True, seed=4, device="cuda"))
    assert cuda[0].device.type == "cuda"
    assert torch.allclose(cuda[0].cpu(), cpu[0], atol=1e-6) and torch.equal(cuda[1].cpu(), cpu[1])


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.slow
def test_real_shared_archive(tmp_path, shared_archive):
    started = time.perf_counter()
    data = load_cifar10(shared_archive, tmp_path)
    decoded = time.perf_counter()
    cached = load_cifar10(shared_archive, tmp_path)
    print(f"decode {decoded - started:.1f} s, cache {time.perf_counter() - decoded:.1f} s")
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.classes == SORTED
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert torch.equal(cached.train_images, data.train_images) and torch.equal(cached.test_labels, data.test_labels)
    # The documented normalization constants fit this copy of the data.
    means = data.train_images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(CIFAR10_MEAN), atol=0.005)
