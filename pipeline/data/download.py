"""The raw CIFAR-10 on disk: the original archive fetched once and checked by MD5, or an offline local copy.

`fetch_raw` is what the `download` stage runs. With `data.source` a URL (the default: the original CIFAR-10
python version), it downloads the archive into the raw folder and checks its MD5; a file already there with the
right MD5 is kept (never fetched again), a corrupt one is refused with one line and fetched again, and a download
with the wrong MD5 is deleted and refused. With `data.source` a local path, or with the environment variable
`ACTSEARCH_CIFAR10` (the offline setting: it wins over data.source), the local copy, in any form
`pipeline.data.sources` reads, is linked or copied into the raw folder instead; a local file whose checksum is
known (named as a file of `KNOWN_FILES`) is MD5-checked first, so a truncated copy is refused with one line rather
than read as far as it goes. A download that stalls for `DOWNLOAD_TIMEOUT_S` fails instead of hanging the stage.
`data_name` says which data a raw copy is, for the reports.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from pipeline.data.sources import DataError

OFFLINE_ENV = "ACTSEARCH_CIFAR10"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
JPEG_COPY_MD5 = "4c378951b36595906bd34035aed06288"  # the shared offline archive (shared/data/README.md)
# Known files by MD5 -> the name reports give the data (the shared offline archive is a lossy JPEG copy).
KNOWN_COPIES = {CIFAR10_MD5: "CIFAR-10", JPEG_COPY_MD5: "CIFAR-10 (JPEG q75 copy)"}
# Known files by name -> their MD5: a local copy under one of these names must be that file, intact.
KNOWN_FILES = {CIFAR10_URL.rsplit("/", 1)[-1]: CIFAR10_MD5, "cifar10-jpeg.tar.gz": JPEG_COPY_MD5}
# Seconds a download may wait on the connection (to connect, or for the next block) before it fails: a server that
# stops sending would otherwise hang the stage, and with it a CI run, for good.
DOWNLOAD_TIMEOUT_S = 60.0
GO_OFFLINE = (f"without internet access, set {OFFLINE_ENV}=/path/to/a/local/copy (an archive, a "
              "cifar-10-batches-py folder or a train/ test/ image tree) and rerun `dvc repro`")
log = logging.getLogger(__name__)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def urlretrieve(url: str, target: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download url to target; no network, or a connection silent for `timeout` seconds, is one line that says how
    to go offline. (urllib's own urlretrieve takes no timeout: it waits on a stalled server for ever.)"""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as file:
            shutil.copyfileobj(response, file, 1 << 20)
    except (urllib.error.URLError, OSError) as error:  # socket timeouts are OSErrors (TimeoutError)
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            reason = f"no data for {timeout:g} s"
        raise DataError(f"cannot download {url} ({reason}); {GO_OFFLINE}") from None


def fetch_raw(source: str, md5: Optional[str], raw_dir: Path,
              download: Callable[[str, Path], None] = urlretrieve) -> Path:
    """Make raw_dir hold exactly the data of `source` (URL or local path; the env offline copy wins)."""
    offline = os.environ.get(OFFLINE_ENV)
    if offline:
        log.info("%s is set: using the local copy %s instead of %s", OFFLINE_ENV, offline, source)
        return _link_local(Path(offline).expanduser().resolve(), raw_dir, f"{OFFLINE_ENV}={offline}")
    if not is_url(source):
        return _link_local(Path(source).resolve(), raw_dir, f"data.source = {source!r}")
    target = raw_dir / source.rsplit("/", 1)[-1]
    _keep_only(raw_dir, target.name)
    if target.is_file():
        found = md5_of(target)
        if md5 is None or found == md5:
            log.info("%s is intact (MD5 %s); not fetched again", target, found)
            return target
        log.warning("%s is corrupt (MD5 %s, expected %s); fetching it again", target, found, md5)
        target.unlink()
    partial = target.with_name(target.name + ".part")
    log.info("downloading %s", source)
    download(source, partial)
    found = md5_of(partial)
    if md5 is not None and found != md5:
        partial.unlink()
        raise DataError(f"the download of {source} has MD5 {found}, expected {md5} (data.md5); it was deleted: "
                        f"rerun `dvc repro` to fetch it again, or {GO_OFFLINE}")
    partial.replace(target)
    return target


def _keep_only(raw_dir: Path, name: str) -> None:
    """The raw folder holds one source: drop whatever an earlier setting left there."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for entry in raw_dir.iterdir():
        if entry.name != name:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _link_local(path: Path, raw_dir: Path, setting: str) -> Path:
    if not path.exists():
        raise DataError(f"{setting}: {path} does not exist; point it at an archive, a cifar-10-batches-py folder "
                        f"or a train/ test/ image tree")
    known = KNOWN_FILES.get(path.name) if path.is_file() else None
    if known is not None and (found := md5_of(path)) != known:
        raise DataError(f"{setting}: {path} has MD5 {found}, but {path.name} has MD5 {known}: the copy is truncated "
                        f"or corrupt; copy it again (a different file under this name: rename it)")
    target = raw_dir / path.name
    _keep_only(raw_dir, "")
    # A copy, not a link: DVC caches this output and may move or re-link it; the original stays untouched.
    if path.is_dir():
        shutil.copytree(path, target, copy_function=shutil.copyfile)
    else:
        shutil.copyfile(path, target)
    return target


def data_name(path: Path) -> str:
    """What the reports call this raw data: 'CIFAR-10', 'CIFAR-10 (JPEG q75 copy)', or a named local copy."""
    if path.is_file() and (known := KNOWN_COPIES.get(md5_of(path))):
        return known
    return f"CIFAR-10 (local copy {path.name})"
