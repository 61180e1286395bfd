"""Stage `download`: the raw CIFAR-10 into data/raw/, fetched once and checked by MD5 (pipeline.data.download).

DVC runs it when its output is missing or changed, or data.source / data.md5 change; the output persists between
runs, so a rerun keeps an intact file instead of fetching it again. Offline, ACTSEARCH_CIFAR10=/path/to/a/copy
points at a local copy in any supported form (docs/pipeline.md).
"""
from __future__ import annotations

from pipeline.data.download import fetch_raw, is_url
from stages.common import RAW_DATA, log, run, start

STAGE = "download"


def main(argv: list[str]) -> None:
    params = start(STAGE)
    source = params.data.source if is_url(params.data.source) else str(params.source_path())
    raw = fetch_raw(source, params.data.md5, RAW_DATA)
    log.info("raw data ready: %s", raw)


if __name__ == "__main__":
    run(main)
