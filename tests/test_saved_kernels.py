"""Kernels saved whole on disk (pipeline.kernels.saved): a later process loads them instead of tracing; a changed
operator, constant or description never gets an old kernel; a bad file is compiled again."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.kernels import fused_kernels, fused_ops
from pipeline.kernels.saved import FOLDER, SUFFIX, SavedKernel, code_fingerprint, kernel_digest

ROOT = Path(__file__).resolve().parents[1]


def swish_plus(x, ws):
    """A small kernel with the shapes of the real ones' arguments: a tensor and a list holding a tensor and None."""
    return x * torch.sigmoid(x) + ws[0], x.sum(-1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    return tmp_path / FOLDER


def counts():
    return SavedKernel.compiled, SavedKernel.loaded


def test_a_kernel_is_compiled_once_saved_and_loaded_by_the_next_instance_with_the_same_results(cache):
    x, w = torch.randn(5, 7), torch.randn(())
    compiled, loaded = counts()
    first = SavedKernel("test", ("swish_plus",), swish_plus)
    want = first(x, [w, None])
    assert counts() == (compiled + 1, loaded) and len(list(cache.glob(f"*{SUFFIX}"))) == 1
    first(torch.randn(9, 3), [w, None])  # another size: the same dynamic variant
    assert counts() == (compiled + 1, loaded)
    second = SavedKernel("test", ("swish_plus",), swish_plus)  # what a new process does
    assert counts() == (compiled + 1, loaded + 1)
    got = second(x, [w, None])
    assert counts() == (compiled + 1, loaded + 1)  # no compile: the loaded variant's guards accept the inputs
    for g, e in zip(got, want):
        assert torch.equal(g, e)
    assert torch.allclose(want[0], x * torch.sigmoid(x) + w, rtol=1e-6, atol=1e-6)


def test_inputs_the_guards_reject_get_a_variant_of_their_own(cache):
    kernel = SavedKernel("test", ("swish_plus", "dtypes"), swish_plus)
    compiled, _ = counts()
    kernel(torch.randn(4, 3), [torch.randn(()), None])
    x64 = torch.randn(4, 3, dtype=torch.float64)
    got = kernel(x64, [torch.zeros((), dtype=torch.float64), None])
    assert SavedKernel.compiled == compiled + 2 and len(list(cache.glob(f"*{SUFFIX}"))) == 2
    assert got[0].dtype == torch.float64 and torch.allclose(got[0], x64 * torch.sigmoid(x64))
    reloaded = SavedKernel("test", ("swish_plus", "dtypes"), swish_plus)
    assert len(reloaded.variants) == 2


def test_an_unreadable_file_is_reported_and_compiled_again(cache, caplog):
    SavedKernel("test", ("swish_plus", "torn"), swish_plus)(torch.randn(3, 2), [torch.randn(()), None])
    (path,) = cache.glob(f"*{SUFFIX}")
    path.write_bytes(path.read_bytes()[:1000])  # torn
    compiled, _ = counts()
    with caplog.at_level(logging.WARNING):
        kernel = SavedKernel("test", ("swish_plus", "torn"), swish_plus)
    assert "could not load the saved kernel" in caplog.text and kernel.variants == []
    x = torch.randn(3, 2)
    assert torch.allclose(kernel(x, [torch.zeros(()), None])[0], x * torch.sigmoid(x))
    assert SavedKernel.compiled == compiled + 1


def test_a_kernel_aot_compile_cannot_capture_is_compiled_in_the_process_instead(cache, caplog, monkeypatch):
    def refuse(self, args):
        raise RuntimeError("not capturable")

    monkeypatch.setattr(SavedKernel, "_compile", refuse)  # what aot_compile raises on a graph it cannot capture
    kernel = SavedKernel("test", ("swish_plus", "refused"), swish_plus)
    x = torch.randn(3, 2)
    with caplog.at_level(logging.WARNING):
        got = kernel(x, [torch.zeros(()), None])
    assert "compiling it in this process only" in caplog.text and "not capturable" in caplog.text
    assert kernel.in_process is not None and not list(cache.glob(f"*{SUFFIX}"))
    assert torch.allclose(got[0], x * torch.sigmoid(x))


def test_the_digest_follows_the_description_and_the_live_code(monkeypatch):
    base = kernel_digest("forward", ("a",))
    assert kernel_digest("forward", ("a",)) == base  # stable
    assert kernel_digest("forward", ("b",)) != base and kernel_digest("backward", ("a",)) != base
    code = code_fingerprint()
    relu = fused_ops.UNARY_GRADS["relu"]
    monkeypatch.setitem(fused_ops.UNARY_GRADS, "relu", dataclasses.replace(relu, value=lambda t, b: t.x * math.nan))
    poisoned = code_fingerprint()
    assert poisoned != code and kernel_digest("forward", ("a",)) != base  # a poisoned operator: a new kernel
    monkeypatch.setitem(fused_ops.UNARY_GRADS, "relu", relu)
    assert code_fingerprint() == code
    monkeypatch.setattr(fused_ops, "EXP_CLIP", fused_ops.EXP_CLIP + 1.0)  # a constant the kernels read
    assert code_fingerprint() not in (code, poisoned)
    monkeypatch.setattr(fused_ops, "EXP_CLIP", fused_ops.EXP_CLIP - 1.0)
    monkeypatch.setattr(fused_kernels, "_mul", lambda a, b: a * b)  # a helper function of the kernels
    assert code_fingerprint() != code


def test_the_fingerprint_ignores_what_compiling_adds_to_the_project_classes():
    code = code_fingerprint()
    fused_kernels.Plan.__slotnames__ = []  # pickle and dynamo add this to a class they meet
    try:
        assert code_fingerprint() == code
    finally:
        del fused_kernels.Plan.__slotnames__


CHILD = """
import json, sys, torch
sys.path.insert(0, {root!r})
from pipeline.kernels import fused
from pipeline.kernels.saved import SavedKernel
from pipeline.search.cell import Supernet
from pipeline.search.relax import make_relaxation
torch.manual_seed(0)
net = Supernet("resnet8", "simple", {{"unary": ["relu", "tanh", "scale"], "binary": ["add", "max"]}},
               make_relaxation("darts", seed=0))
site = net.sites()[1]
x = torch.randn(64, 16, 4, 4, requires_grad=True)
with fused.using("compile"), net.cell.forward_pass():
    out = site(x)
    out.square().sum().backward()
alpha_grad = [a.grad.square().sum().item() for a in net.arch_parameters() if a.grad is not None]
print(json.dumps({{"compiled": SavedKernel.compiled, "loaded": SavedKernel.loaded, "out": out.sum().item(),
                  "grad": x.grad.square().sum().item(), "alpha_grad": alpha_grad}}))
"""


@pytest.mark.slow
def test_a_second_process_loads_the_cells_kernels_instead_of_compiling_them(tmp_path):
    """The real cell's forward and backward kernels across processes: the second compiles nothing and computes the
    same numbers to the bit."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    runs = [json.loads(subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    first, second = runs
    assert first["compiled"] >= 2 and first["loaded"] == 0  # forward and backward
    assert second["compiled"] == 0 and second["loaded"] == first["compiled"]
    assert {k: v for k, v in first.items() if k not in ("compiled", "loaded")} == \
        {k: v for k, v in second.items() if k not in ("compiled", "loaded")}
    assert len(first["alpha_grad"]) > 0


def test_importing_the_kernels_does_not_import_the_compiler():
    """torch._dynamo and torch._inductor cost every stage about 1.2 s of start-up; only a compile needs them."""
    code = ("import sys, pipeline.kernels.fused_genotype; "
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
