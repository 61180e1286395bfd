"""Where CIFAR-10 comes from, and how each on-disk form of it is read into tensors.

Three forms are understood (pipeline.data.cifar.load_cifar10 picks one and caches the result):
- torchvision's ``cifar-10-batches-py`` folder of pickled batches (what ``CIFAR10(download=True)`` leaves behind);
- an image-folder tree ``train/<class>/*`` and ``test/<class>/*``, possibly inside one top folder;
- an archive (.tar.gz, .tgz, .tar, .zip) of such a tree, read member by member without extracting it.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SPLITS = ("train", "test")
IMAGE_SIZE = 32
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
HOW_TO_FIX = (
    "set data.source in params.yaml to the URL of the original CIFAR-10 python archive (the download stage fetches "
    "it) or to a local copy: a cifar-10-batches-py folder, or a folder or archive holding train/<class>/*.jpg and "
    "test/<class>/*.jpg; offline, export ACTSEARCH_CIFAR10=/path/to/copy"
)


class DataError(Exception):
    """The data source is missing or malformed; the message says which path and how to fix it."""


@dataclass
class CifarData:
    """CIFAR-10 as uint8 tensors (N, 3, 32, 32) with int64 labels; label i names classes[i]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


def describe_tree_problem(what: str, where: str) -> DataError:
    return DataError(f"{what} in {where}; {HOW_TO_FIX}")


def read_source(path: Path) -> CifarData:
    """Decode a located source (archive, pickled-batches folder or image tree) into tensors."""
    if path.is_file():
        return read_archive(path)
    if (path / TEST_BATCH).is_file() or (path / TRAIN_BATCHES[0]).is_file():
        return read_pickled_batches(path)
    return read_image_folder(path)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


# -------------------------------------------------------------------------------------------- pickled batches
class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch files but refuses any global other than numpy's array rebuilders.

    A plain pickle.load would run arbitrary code from a file the user pointed us at.
    """

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        # Batches pickled by NumPy 1 name numpy.core, which NumPy 2 renamed to numpy._core.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def open_binary(path: Path) -> IO[bytes]:
    return open(path, "rb")


def unpickle_file(path: Path, open_file: Callable[[Path], IO[bytes]] = open_binary) -> dict:
    """One pickled batch; `open_file` reads it from elsewhere than the disk (a member of the original archive)."""
    try:
        with open_file(path) as file:
            content = NumpyOnlyUnpickler(file, encoding="bytes").load()
    except (FileNotFoundError, KeyError):
        raise DataError(f"{path} is missing from the CIFAR-10 batches folder {path.parent}; {HOW_TO_FIX}") from None
    except Exception as error:  # pickle raises many types on corrupt input; all mean the same to the user
        raise DataError(f"cannot read CIFAR-10 batch file {path} ({error}); replace the folder with a fresh copy "
                        f"or {HOW_TO_FIX}") from error
    if not isinstance(content, dict):
        raise DataError(f"{path} does not hold a CIFAR-10 batch (a pickled dict); {HOW_TO_FIX}")
    return content


def read_batch(path: Path, open_file: Callable[[Path], IO[bytes]] = open_binary) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle_file(path, open_file)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE \
            or labels is None or len(labels) != len(data):
        raise DataError(f"{path} lacks b'data' (N x 3072 uint8) with one b'labels' entry per row; {HOW_TO_FIX}")
    # Rows are stored channel-major (1024 red, 1024 green, 1024 blue), i.e. already (3, 32, 32).
    return data.astype(np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), np.asarray(labels, dtype=np.int64)


def read_pickled_batches(folder: Path, open_file: Callable[[Path], IO[bytes]] = open_binary) -> CifarData:
    meta = unpickle_file(folder / META_FILE, open_file)
    names = meta.get(b"label_names")
    if not names:
        raise DataError(f"{folder / META_FILE} lacks b'label_names'; {HOW_TO_FIX}")
    classes = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    train = [read_batch(folder / name, open_file) for name in TRAIN_BATCHES]
    test_images, test_labels = read_batch(folder / TEST_BATCH, open_file)
    train_labels = np.concatenate([labels for _, labels in train])
    for labels, name in ((train_labels, "training"), (test_labels, TEST_BATCH)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{name} labels in {folder} fall outside the {len(classes)} classes of {META_FILE}; "
                            f"{HOW_TO_FIX}")
    return CifarData(
        train_images=torch.from_numpy(np.concatenate([images for images, _ in train])),
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
    )


# ------------------------------------------------------------------------------------------ image-folder trees
@dataclass
class ImageTree:
    """The image files of a train/test tree: files[split][class] lists paths relative to the tree's container."""

    files: dict[str, dict[str, list[str]]]
    classes: tuple[str, ...]

    def ordered_members(self, split: str) -> Iterator[tuple[str, int]]:
        """(path, label) in dataset order: classes alphabetically, then file names."""
        for label, name in enumerate(self.classes):
            for path in sorted(self.files[split][name]):
                yield path, label


def member_parts(name: str) -> list[str]:
    """Path components of an archive member or relative file, ignoring leading './' and doubled slashes."""
    return [part for part in name.split("/") if part not in ("", ".")]


def is_hidden(parts: list[str]) -> bool:
    # Skip dot-files and macOS resource forks that zip tools add next to the real images.
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def index_image_tree(entries: Iterable[tuple[str, bool]], where: str) -> ImageTree:
    """Find train/<class>/<file> (optionally under one top folder) among (posix path, is_dir) entries.

    Checks the layout before any image is decoded: both splits present, no empty class, same classes in both.
    """
    entries = [(parts, is_dir) for path, is_dir in entries
               if (parts := member_parts(path)) and not is_hidden(parts)]
    roots = {tuple(parts[:depth]) for parts, _ in entries for depth in (0, 1)
             if len(parts) > depth + 1 and parts[depth] in SPLITS}
    if not roots:
        raise describe_tree_problem("found no train/ or test/ folder (nor one inside a single top folder)", where)
    if len(roots) > 1:
        tops = ", ".join(sorted("/".join(root) + "/" for root in roots))
        raise describe_tree_problem(f"found more than one image tree ({tops}); keep one", where)
    root = list(roots.pop())
    depth = len(root)
    files: dict[str, dict[str, list[str]]] = {}
    for parts, is_dir in entries:
        if parts[:depth] != root or len(parts) < depth + 2 or parts[depth] not in SPLITS:
            continue
        split, name = parts[depth], parts[depth + 1]
        class_files = files.setdefault(split, {}).setdefault(name, [])
        if not is_dir and len(parts) == depth + 3:
            class_files.append("/".join(parts))
    prefix = "/".join(root + [""])
    for split in SPLITS:
        if split not in files:
            raise describe_tree_problem(f"there is no {prefix}{split}/ split", where)
        for name, class_files in files[split].items():
            if not class_files:
                raise describe_tree_problem(f"class folder {prefix}{split}/{name}/ holds no images", where)
    train_classes, test_classes = set(files["train"]), set(files["test"])
    if train_classes != test_classes:
        raise describe_tree_problem(
            f"train and test classes differ (only in train: {sorted(train_classes - test_classes)}, "
            f"only in test: {sorted(test_classes - train_classes)})", where)
    return ImageTree(files, tuple(sorted(train_classes)))


def decode_image(data: bytes, member: str, where: str) -> np.ndarray:
    """One image file's bytes -> (32, 32, 3) uint8 RGB; grayscale, palette and RGBA are converted to RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if size == (IMAGE_SIZE, IMAGE_SIZE):
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {member} in {where} (not in any image format PIL knows); "
                        f"replace or delete that file") from None
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for truncated or damaged image data
        raise DataError(f"cannot decode image {member} in {where} ({error}); replace or delete that file") from None
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"image {member} in {where} is {size[0]}x{size[1]}, not {IMAGE_SIZE}x{IMAGE_SIZE}; "
                        f"CIFAR-10 images must be 32x32: resize or remove it")
    return rgb


class ImageDecoder:
    """Fills one preallocated (N, 32, 32, 3) array per split as image bytes arrive, in any order."""

    def __init__(self, tree: ImageTree, where: str):
        self.where = where
        self.slots: dict[str, tuple[str, int]] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.pixels: dict[str, np.ndarray] = {}
        for split in SPLITS:
            members = list(tree.ordered_members(split))
            self.slots.update({path: (split, index) for index, (path, _) in enumerate(members)})
            self.labels[split] = np.array([label for _, label in members], dtype=np.int64)
            self.pixels[split] = np.empty((len(members), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        self.classes = tree.classes

    def wants(self, member: str) -> bool:
        return "/".join(member_parts(member)) in self.slots

    def add(self, member: str, data: bytes) -> None:
        split, index = self.slots["/".join(member_parts(member))]
        self.pixels[split][index] = decode_image(data, member, self.where)

    def result(self) -> CifarData:
        def to_chw(split: str) -> torch.Tensor:
            return torch.from_numpy(self.pixels[split]).permute(0, 3, 1, 2).contiguous()

        return CifarData(to_chw("train"), torch.from_numpy(self.labels["train"]),
                         to_chw("test"), torch.from_numpy(self.labels["test"]), self.classes)


def read_image_folder(folder: Path) -> CifarData:
    entries = []
    for directory, subdirs, filenames in os.walk(folder):
        relative = Path(directory).relative_to(folder).as_posix()
        relative = "" if relative == "." else relative + "/"
        entries += [(relative + name, True) for name in subdirs]
        entries += [(relative + name, False) for name in filenames]
    decoder = ImageDecoder(index_image_tree(entries, str(folder)), str(folder))
    for member in decoder.slots:
        try:
            data = (folder / member).read_bytes()
        except OSError as error:
            raise DataError(f"cannot read image {folder / member} ({error}); check the file's permissions") from None
        decoder.add(member, data)
    return decoder.result()


def read_archive(path: Path) -> CifarData:
    where = f"archive {path}"
    try:
        if path.name.lower().endswith(".zip"):
            return read_zip(path, where)
        return read_tar(path, where)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        # Any of these mid-way means the archive itself is damaged (truncated download, wrong format).
        raise DataError(f"cannot read {where} ({type(error).__name__}: {error}); it is corrupt or truncated: "
                        f"copy or download it again, or {HOW_TO_FIX}") from None


def read_zip(path: Path, where: str) -> CifarData:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        decoder = ImageDecoder(index_image_tree(((i.filename, i.is_dir()) for i in infos), where), where)
        for info in infos:
            if not info.is_dir() and decoder.wants(info.filename):
                decoder.add(info.filename, archive.read(info))
    return decoder.result()


def read_tar(path: Path, where: str) -> CifarData:
    # Random-access mode reads the member list first (one pass), so the layout is checked before decoding;
    # reading members in archive order afterwards only seeks forward, which a gzip stream does cheaply.
    with tarfile.open(path, "r:*") as archive:
        members = archive.getmembers()
        batches = [m.name for m in members if m.isfile() and m.name.rsplit("/", 1)[-1] == TEST_BATCH]
        if batches:  # the original CIFAR-10 python archive: cifar-10-batches-py/ of pickled batches
            return read_pickled_batches(Path(batches[0]).parent,
                                        lambda member: archive.extractfile(member.as_posix()))
        tree = index_image_tree(((m.name, m.isdir()) for m in members if m.isdir() or m.isfile()), where)
        decoder = ImageDecoder(tree, where)
        for member in members:
            if member.isfile() and decoder.wants(member.name):
                decoder.add(member.name, archive.extractfile(member).read())
    return decoder.result()
