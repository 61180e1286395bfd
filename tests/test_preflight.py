from collections import namedtuple

import pytest

from pipeline.study import preflight
from pipeline.study.preflight import PreflightError, check_free_space


def test_enough_space_passes(tmp_path):
    assert check_free_space(tmp_path / "not" / "yet" / "there", 1) > 1


def test_full_disk_is_reported_clearly(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage(10 * 2**20, 10 * 2**20 - 2**19, 2**19))
    with pytest.raises(PreflightError, match=r"only 0 MiB free on the disk holding .* at least 500 MiB.*dvc gc"):
        check_free_space(tmp_path, 500)
