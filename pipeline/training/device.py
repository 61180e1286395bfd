"""Device selection, seeding, mixed precision and RNG state capture.

Nothing here hard-codes a device: `resolve_device("auto")` picks CUDA, then MPS, then CPU.
RNG states are returned as plain lists/ints/tensors so a checkpoint holding them loads with
`torch.load(weights_only=True)` (no pickled numpy arrays or tuples of unknown classes).
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device specs that `resolve_device` accepts on this machine."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
        names.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" | "mps" into a usable torch.device, or raise ValueError."""
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps', got {spec!r}")
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    hint = f"available here: {', '.join(['auto'] + available_devices())}"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {spec!r}; {hint}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available; {hint}")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                             f"exist; {hint}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {spec!r} requested but MPS is not available; {hint}")
        return torch.device("mps")
    raise ValueError(f"unsupported device type {device.type!r} in {spec!r}; {hint}")


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device).

    With `deterministic` (use it on CPU, where it costs nothing) torch is asked for deterministic
    algorithms and cuDNN autotuning is off; without it cuDNN may benchmark for speed (CUDA runs).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic kernel should warn, not kill a long run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Deterministic mode also fills every new tensor's memory with NaN before the op writes it, a debugging aid
    # that costs a pass over each output (bench/retrain.py: several percent of a CPU training step). The results
    # do not depend on it, as no kernel reads memory it has not written.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context elsewhere (CPU/MPS train in fp32)."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict:
    """Capture python, numpy, torch (CPU) and CUDA RNG states in a weights_only-loadable form."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        # Only a CUDA context this process already uses: capturing would otherwise create one for a CPU run.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    if _mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by `rng_state()` (CUDA states only for devices that exist here)."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((int(py_version), tuple(int(v) for v in py_internal), py_gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
    if "mps" in state and _mps_available():
        torch.mps.set_rng_state(state["mps"].cpu())
