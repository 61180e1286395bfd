"""Atomic checkpoints that refuse to be mixed into a run they do not belong to.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), written to a temporary
file in the target directory, fsynced, then renamed over the target: a crash leaves either the old
checkpoint or the new one, never half a file. Loading uses `torch.load(weights_only=True)`.

A checkpoint belongs to its settings and to its inputs: `hash_files` fingerprints the files a stage reads (its data
and its code, as dvc.yaml lists them), so that a checkpoint left by a run on other data or other code is refused
instead of resumed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

# Bump when the layout of what `train.py` stores changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used for this run."""


def config_fingerprint(d: dict) -> str:
    """Stable 16-hex-digit hash of a JSON-able dict (key order does not matter, tuples equal lists)."""
    if not isinstance(d, dict):
        raise ValueError(f"config_fingerprint expects a dict, got {type(d).__name__}")
    try:
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as err:
        raise ValueError(f"config_fingerprint needs JSON-able values (str, int, float, bool, None, "
                         f"lists, dicts): {err}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def hash_files(root: str | os.PathLike, paths) -> dict[str, str]:
    """{relative path: 16-hex-digit SHA-256} of every file at `paths` (relative to `root`); a folder stands for
    every file under it (Python caches left out), a missing path hashes as "missing"."""
    root, hashes = Path(root), {}
    for relative in paths:
        path = root / relative
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    hashes[file.relative_to(root).as_posix()] = _file_hash(file)
        else:
            hashes[Path(relative).as_posix()] = _file_hash(path) if path.is_file() else "missing"
    return hashes


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows), hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically write `state` (plus `format_version`) to `path`, creating its directory if needed."""
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**state, "format_version": CHECKPOINT_FORMAT_VERSION}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave a half-written temp file behind (includes KeyboardInterrupt).
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)
    # A process killed while saving leaves its temporary file; one writer per checkpoint path is assumed.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _equal(found, wanted) -> bool:
    try:
        return bool(found == wanted)
    except Exception:  # e.g. a tensor stored where a plain value is expected
        return False


def _differences(found, wanted, prefix: str = "") -> list[str]:
    """Where two nested dicts differ, as `a.b: x in file vs y now` (nested dicts named by their dotted keys)."""
    diffs = []
    for k in sorted(set(found) | set(wanted), key=str):
        old, new = found.get(k, "<missing>"), wanted.get(k, "<missing>")
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += _differences(old, new, f"{prefix}{k}.")
        elif not _equal(old, new):
            diffs.append(f"{prefix}{k}: {old!r} in file vs {new!r} now")
    return diffs


def _describe_mismatch(key: str, found, wanted) -> str:
    if isinstance(found, dict) and isinstance(wanted, dict):
        return f"{key} differs ({'; '.join(_differences(found, wanted))})"
    return f"{key} is {found!r} in the file but {wanted!r} for this run"


def load_checkpoint(path: str | os.PathLike, expected: dict | None = None) -> dict | None:
    """Load a checkpoint written by `save_checkpoint`; None if `path` does not exist.

    Every key of `expected` must be present in the checkpoint with an equal value (use it for a config
    fingerprint, network name, ...), and the format version must be the current one; otherwise, or if the
    file is truncated/corrupt, raise CheckpointError naming the path, the problem and the fix.
    """
    path = Path(path)
    if not path.exists():
        return None
    fix = "delete it to restart the run from scratch (or choose another checkpoint path)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated, corrupt or non-torch files
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt, or not written by "
                              f"save_checkpoint: {reason}); {fix}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict; {fix}")
    wanted = {"format_version": CHECKPOINT_FORMAT_VERSION, **(expected or {})}
    problems = []
    for key, value in wanted.items():
        if key not in state:
            problems.append(f"{key} is missing")
        elif not _equal(state[key], value):
            problems.append(_describe_mismatch(key, state[key], value))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not belong to this run: {'; '.join(problems)}. "
                              f"Resuming it would mix two different runs; {fix}")
    return state
