"""The search's loaders (stages/common.py): the architecture split gets the training transform (crop + flip), as
DARTS, DrNAS and GRAFS feed their architecture step; the discretization gap measures it unaugmented."""
import torch
import torch.nn.functional as F

import stages.common as common
from pipeline.data.augment import CROP_PADDING, BatchLoader

COUNT, SIZE = 24, 8


def prepared(tmp_path, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (COUNT, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    labels = torch.arange(COUNT)  # each image's label is its index: batches can be traced back to their images
    torch.save({"train_images": images, "train_labels": labels}, tmp_path / "cifar10.pt")
    torch.save({"weights": torch.arange(0, 12), "arch": torch.arange(12, COUNT)}, tmp_path / "split.pt")
    monkeypatch.setattr(common, "PREPARED_DATA", tmp_path / "cifar10.pt")
    monkeypatch.setattr(common, "SEARCH_SPLIT", tmp_path / "split.pt")
    return images


def variants(image: torch.Tensor) -> list[torch.Tensor]:
    """Every crop (padding 4, black borders) and flip of one uint8 image: the He et al. training transform."""
    padded = F.pad(image, (CROP_PADDING,) * 4)
    crops = [padded[:, r:r + SIZE, c:c + SIZE] for r in range(2 * CROP_PADDING + 1) for c in range(2 * CROP_PADDING + 1)]
    return crops + [crop.flip(-1) for crop in crops]


def batches(loader: BatchLoader):
    """(label, pixels) of one epoch, the normalization undone back to uint8 pixels."""
    for x, y in loader:
        pixels = ((x - loader.shift) / loader.scale).round().to(torch.uint8)
        yield from zip(y.tolist(), pixels)


def test_the_architecture_split_gets_the_training_transform(tmp_path, monkeypatch):
    images = prepared(tmp_path, monkeypatch)
    _, arch = common.search_loaders(4, seed=0, device=torch.device("cpu"))
    assert arch.augment
    seen, changed = 0, 0
    for label, pixels in batches(arch):
        assert 12 <= label < COUNT  # only the architecture split
        assert any(torch.equal(pixels, v) for v in variants(images[label])), label  # a crop/flip of its image
        seen, changed = seen + 1, changed + (not torch.equal(pixels, images[label]))
    assert seen == 12 and changed >= 9  # 1 in 162 variants is the image itself


def test_the_discretization_gap_measures_the_plain_images(tmp_path, monkeypatch):
    images = prepared(tmp_path, monkeypatch)
    _, arch = common.search_loaders(5, seed=0, device=torch.device("cpu"), drop_last=False, augment_arch=False)
    seen = [label for label, pixels in batches(arch) if torch.equal(pixels, images[label])]
    assert sorted(seen) == list(range(12, COUNT))  # every image, unchanged, the last partial batch included
