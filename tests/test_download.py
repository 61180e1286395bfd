"""The download stage's logic: fetched once, MD5-checked, re-fetched when corrupt, one line offline; the
original archive format (pickled batches in a tar.gz) is read; reports name the data."""
import hashlib
import io
import logging
import pickle
import tarfile

import numpy as np
import pytest

from pipeline.data.download import OFFLINE_ENV, data_name, fetch_raw, urlretrieve
from pipeline.data.sources import DataError, read_source

URL = "https://example.invalid/cifar-10-python.tar.gz"


class LocalCopy:
    """Stands in for the network: 'downloads' by copying a local file, and counts the calls."""

    def __init__(self, content: bytes):
        self.content, self.calls = content, 0

    def __call__(self, url, target):
        self.calls += 1
        target.write_bytes(self.content)


def test_fetched_once_kept_while_intact_and_refetched_when_corrupt(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    content = b"the original archive"
    md5 = hashlib.md5(content).hexdigest()
    download, raw = LocalCopy(content), tmp_path / "raw"
    target = fetch_raw(URL, md5, raw, download)
    assert target == raw / "cifar-10-python.tar.gz" and target.read_bytes() == content and download.calls == 1
    assert fetch_raw(URL, md5, raw, download) == target and download.calls == 1  # intact: not fetched again
    target.write_bytes(b"the original arch")  # truncated
    with caplog.at_level(logging.WARNING):
        fetch_raw(URL, md5, raw, download)
    assert download.calls == 2 and target.read_bytes() == content
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "corrupt" in warning[0] and md5 in warning[0] and "\n" not in warning[0]
    assert sorted(p.name for p in raw.iterdir()) == ["cifar-10-python.tar.gz"]  # no partial file left


def test_a_download_with_the_wrong_md5_is_refused_and_deleted(tmp_path, monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    download = LocalCopy(b"a proxy's error page")
    with pytest.raises(DataError) as caught:
        fetch_raw(URL, hashlib.md5(b"the original archive").hexdigest(), tmp_path, download)
    message = str(caught.value)
    assert "\n" not in message and "MD5" in message and hashlib.md5(b"a proxy's error page").hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_no_network_is_one_line_that_says_how_to_go_offline(tmp_path):
    with pytest.raises(DataError) as caught:
        urlretrieve("http://127.0.0.1:9/cifar-10-python.tar.gz", tmp_path / "x")  # nothing listens on port 9
    message = str(caught.value)
    assert "\n" not in message and f"{OFFLINE_ENV}=" in message and "cannot download" in message


def test_the_offline_setting_replaces_the_download_by_the_local_copy(tmp_path, monkeypatch):
    copy = tmp_path / "cifar10-copy.tar.gz"
    copy.write_bytes(b"images")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "cifar-10-python.tar.gz").write_bytes(b"an earlier download")
    monkeypatch.setenv(OFFLINE_ENV, str(copy))
    download = LocalCopy(b"never")
    target = fetch_raw(URL, "0" * 32, raw, download)
    assert download.calls == 0 and target.read_bytes() == b"images"
    assert [p.name for p in raw.iterdir()] == ["cifar10-copy.tar.gz"]  # one source in the raw folder
    assert data_name(target) == "CIFAR-10 (local copy cifar10-copy.tar.gz)"
    monkeypatch.setenv(OFFLINE_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(DataError, match=f"{OFFLINE_ENV}=.*missing.tar.gz does not exist"):
        fetch_raw(URL, None, raw, download)


def test_the_shared_archive_is_named_as_the_jpeg_copy(shared_archive):
    assert data_name(shared_archive) == "CIFAR-10 (JPEG q75 copy)"


def _batch(images: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({b"data": images.reshape(len(images), -1), b"labels": labels})


def test_the_original_archive_format_is_read(tmp_path):
    """cifar-10-python.tar.gz holds cifar-10-batches-py/ with pickled batches; pixels come back unchanged."""
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8) for i in range(1, 6)}
    batches["test_batch"] = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    names = [f"c{i}" for i in range(10)]
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        files = {name: _batch(images, [i % 10 for i in range(len(images))]) for name, images in batches.items()}
        files["batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in names]})
        for name, content in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = read_source(archive)
    expected_train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    assert np.array_equal(data.train_images.numpy(), expected_train)
    assert np.array_equal(data.test_images.numpy(), batches["test_batch"])
    assert data.test_labels.tolist() == [0, 1, 2] and data.classes == tuple(names)


def test_a_stalled_download_fails_after_its_timeout_instead_of_hanging(tmp_path):
    """A server that accepts the connection and never answers (issue 24, item 12: urllib's urlretrieve has no
    timeout, so the download stage waited for good)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
    url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz"
    outcome = []

    def fetch():
        try:
            urlretrieve(url, tmp_path / "x", timeout=0.5)
        except DataError as error:
            outcome.append(str(error))

    worker = threading.Thread(target=fetch, daemon=True)
    try:
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "the download still waits on a silent server"
    finally:
        server.close()
    [message] = outcome
    assert "\n" not in message and "no data for 0.5 s" in message and f"{OFFLINE_ENV}=" in message


@pytest.mark.parametrize("name", ["cifar10-jpeg.tar.gz", "cifar-10-python.tar.gz"])
def test_a_local_copy_with_a_known_name_and_the_wrong_md5_is_refused(tmp_path, monkeypatch, name):
    copy = tmp_path / "copies" / name
    copy.parent.mkdir()
    copy.write_bytes(b"the first megabyte of the archive, then the copy was cut")
    raw = tmp_path / "raw"
    monkeypatch.setenv(OFFLINE_ENV, str(copy))
    with pytest.raises(DataError) as caught:
        fetch_raw(URL, None, raw, LocalCopy(b"never"))
    message = str(caught.value)
    assert "\n" not in message and f"{OFFLINE_ENV}=" in message and "truncated or corrupt" in message
    assert hashlib.md5(copy.read_bytes()).hexdigest() in message
    monkeypatch.delenv(OFFLINE_ENV)
    with pytest.raises(DataError, match="data.source = .* truncated or corrupt"):  # the same as data.source
        fetch_raw(str(copy), None, raw, LocalCopy(b"never"))


def test_the_intact_shared_archive_passes_its_md5_check(tmp_path, monkeypatch, shared_archive):
    monkeypatch.setenv(OFFLINE_ENV, str(shared_archive))
    target = fetch_raw(URL, None, tmp_path / "raw", LocalCopy(b"never"))
    assert target.name == "cifar10-jpeg.tar.gz" and data_name(target) == "CIFAR-10 (JPEG q75 copy)"
