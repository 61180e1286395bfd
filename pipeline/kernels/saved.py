"""Compiled kernels kept on disk whole, so that a later process loads them instead of tracing them again.

torch.compile's own disk caches (inductor's code, AOTAutograd's graphs) spare a second process the code generation
and the C++ compiler, not dynamo's tracing of the Python: for the complex cell's 110 candidates that is 6-7 s per
kernel variant, 25-50 s per search process (docs/benchmarks.md, "Kernels saved whole, and the eager cell from
2 candidates per edge"). torch's
`aot_compile` captures everything a call needs (the traced graph, its guards, inductor's compiled code) as one
serialisable object. A `SavedKernel` keeps each variant of a kernel (one per set of inputs the earlier variants'
guards reject: another dtype, device or tensor rank) in a file under inductor's cache directory
(TORCHINDUCTOR_CACHE_DIR), named by a digest of

- the kernel's static description (cell, candidates, which gradients: everything baked into its code),
- the live code it runs (`code_fingerprint`: every function, operator registry and constant of the modules the
  kernels call, read from the objects themselves, so an edited or monkeypatched operator gets new files, never the
  old kernel), and torch's version.

A file that does not load (torn, written by another torch or CPU) is reported and compiled again; a kernel that
`aot_compile` cannot capture is reported and compiled by plain torch.compile, unsaved (a failure there falls back
to eager in `pipeline.kernels.fused`). Deleting the folder only costs the next process its compile.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import logging
import types
import uuid
from pathlib import Path
from typing import Callable

import torch

from pipeline.kernels import fast_math, fused_kernels, fused_ops
from pipeline.space import ops

log = logging.getLogger(__name__)
FOLDER = "actsearch_kernels"
SUFFIX = ".kernel"
# The modules whose code a kernel runs (fused_kernels -> fused_ops -> fast_math, space.ops's constants and helpers).
CODE_MODULES = (fused_kernels, fused_ops, fast_math, ops)
_RESTARTS = 3
_PLAIN = (bool, int, float, str, bytes, type(None))


def error_line(err: BaseException) -> str:
    """"Type: first line of the message", for a warning that names what failed without its traceback."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _describe(value, seen: dict, depth: int = 0) -> str:
    """A stable text for `value`'s code and constants (the same in every process for the same code). `seen` holds
    what was described (by id, keeping the object alive so that no later temporary reuses its id)."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if depth > 12 or id(value) in seen:
        return "<seen>"
    seen[id(value)] = value
    nested = lambda v: _describe(v, seen, depth + 1)  # noqa: E731
    if isinstance(value, types.CodeType):
        # The bytecode, names and constants (nested functions' code among them); not marshal, whose output depends
        # on reference counts.
        return f"code({value.co_code.hex()},{value.co_names},{[nested(c) for c in value.co_consts]})"
    if isinstance(value, types.FunctionType):
        cells = [nested(cell.cell_contents) for cell in value.__closure__ or ()]
        return f"fn({value.__module__}.{value.__qualname__},{nested(value.__code__)},{cells},{value.__defaults__!r})"
    if isinstance(value, (tuple, list)):
        return f"[{','.join(nested(v) for v in value)}]"
    if isinstance(value, dict):
        return f"{{{','.join(f'{k!r}:{nested(v)}' for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])))}}}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"{type(value).__qualname__}({nested([getattr(value, f.name) for f in dataclasses.fields(value)])})"
    if isinstance(value, property):
        return f"property({nested(value.fget)})"
    if isinstance(value, (staticmethod, classmethod)):
        return f"{type(value).__name__}({nested(value.__func__)})"
    if isinstance(value, type) and value.__module__ in {m.__name__ for m in CODE_MODULES}:
        # Its methods and constants; not the bookkeeping torch and pickle add to a class (__slotnames__, ...).
        members = {name: member for name, member in vars(value).items()
                   if isinstance(member, (types.FunctionType, property, staticmethod, classmethod))
                   or (not name.startswith("__") and isinstance(member, _PLAIN))}
        return f"class({value.__qualname__},{nested(members)})"
    return type(value).__qualname__  # modules, torch's objects: not the project's code


def code_fingerprint() -> str:
    """sha256 of the kernel modules' live functions, registries and constants, and of torch's version."""
    digest = hashlib.sha256(torch.__version__.encode())
    for module in CODE_MODULES:
        own = {name: value for name, value in vars(module).items() if not name.startswith("__")
               and not inspect.ismodule(value) and getattr(value, "__module__", module.__name__) == module.__name__}
        digest.update(f"{module.__name__}:{_describe(own, {})}".encode())
    return digest.hexdigest()


def kernel_digest(kind: str, static: tuple) -> str:
    """The file name stem of a kernel: its kind, static description (dataclasses of tuples: a stable repr) and
    code."""
    return hashlib.sha256(f"{kind}|{static!r}|{code_fingerprint()}".encode()).hexdigest()[:32]


class SavedKernel:
    """`fn` compiled by torch.compile(dynamic=True, fullgraph=True), each variant loaded from or saved to disk.

    `compiled` and `loaded` count this process's variants (tests and benchmarks: a mask change compiles nothing)."""

    compiled = 0
    loaded = 0

    def __init__(self, kind: str, static: tuple, fn: Callable):
        self.fn, self.in_process = fn, None  # in_process: plain torch.compile, where aot_compile failed
        # Imported here, not at the top: torch._inductor brings dynamo with it, 1.2 s of start-up that every stage
        # would pay, also those that never compile (measured with python -X importtime).
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        self.folder = Path(cache_dir()) / FOLDER
        self.digest = kernel_digest(kind, static)
        self.variants = [v for v in map(self._load, sorted(self.folder.glob(f"{self.digest}-*{SUFFIX}")))
                         if v is not None]

    @staticmethod
    def _load(path: Path):
        try:
            with path.open("rb") as file:
                variant = torch.compiler.load_compiled_function(file)
        except Exception as err:  # noqa: BLE001 - any unreadable file: compile it again, the result is the same
            log.warning("could not load the saved kernel %s (%s); compiling it again", path, error_line(err))
            return None
        variant.disable_guard_check()  # checked once, by __call__
        SavedKernel.loaded += 1
        return variant

    def _compile(self, args: tuple):
        # Dynamo restarts its analysis when a backend pass turns a Python scalar into a tensor (it remembers the
        # scalar and traces again); torch.compile retries by itself, aot_compile leaves the retry to its caller.
        for attempt in itertools.count():
            try:
                return torch.compile(self.fn, dynamic=True, fullgraph=True).aot_compile((args, {}))
            except torch._dynamo.exc.RestartAnalysis:
                if attempt >= _RESTARTS:
                    raise

    def __call__(self, *args):
        if self.in_process is not None:
            return self.in_process(*args)
        for variant in self.variants:
            if variant.guard_check(*args):
                return variant(*args)
        try:
            variant = self._compile(args)
        except Exception as err:  # noqa: BLE001 - what aot_compile cannot capture, torch.compile may still compile
            log.warning("could not compile the kernel ahead of time (%s); compiling it in this process only",
                        error_line(err))
            self.in_process = torch.compile(self.fn, dynamic=True, fullgraph=True)
            return self.in_process(*args)
        SavedKernel.compiled += 1
        path = self.folder / f"{self.digest}-{uuid.uuid4().hex[:12]}{SUFFIX}"  # concurrent writers never collide
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            variant.save_compiled_function(str(path))
        except Exception as err:  # noqa: BLE001 - a full or read-only disk: the kernel still runs, unsaved
            log.warning("could not save the compiled kernel to %s (%s); the next process compiles it again", path,
                        error_line(err))
        variant.disable_guard_check()
        self.variants.append(variant)
        return variant(*args)
