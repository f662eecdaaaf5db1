"""End to end: find_critical with the kernels on (C++ CPU ops here) == with the kernels off (PyTorch references).

Same ranking (names, in order), same critical set, same convergence, scores and curve equal to float tolerance;
weights bit-identical afterwards. The GPU variant runs the CUDA / Triton kernels (marked gpu).
Without the compiled ops "kernels on" would run the references too, comparing them with themselves: every test
here then fails (``require_compiled_ops``), it does not pass or skip.
"""
from __future__ import annotations

import time

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast.ops import _lib
from achilles_fast import find_critical

from conftest import assert_bit_identical, weights_snapshot


def require_compiled_ops(device: str = "cpu") -> None:
    """Fail (not skip) unless achilles_fast._C loaded and serves every op on ``device``."""
    info = ops.backend_info()
    assert info["source"] == "extension", (
        f"achilles_fast._C did not load ({info['error']}): kernels on would run the PyTorch references, so this "
        "end-to-end comparison would compare the references with themselves. Build the compiled ops: "
        "`pip install --no-build-isolation -e .` or `python setup.py build_ext --inplace`")
    served = info["cpu_ops"] if device == "cpu" else info["cuda_ops"] + info["triton_cuda_ops"]
    missing = sorted(set(_lib.OPS) - set(served))
    assert not missing, f"no compiled {device} kernel for {missing}: {info}"


def _compare(model, tok, **kw):
    require_compiled_ops(next(model.parameters()).device.type)
    snap = weights_snapshot(model)
    t0 = time.perf_counter()
    on = find_critical(model, tok, kernels=True, progress=False, **kw)
    t1 = time.perf_counter()
    off = find_critical(model, tok, kernels=False, progress=False, **kw)
    t2 = time.perf_counter()
    assert_bit_identical(model, snap)
    assert on.params["kernels"] is True and off.params["kernels"] is False
    assert [n.name for n in on.top_ranked] == [n.name for n in off.top_ranked], "rankings differ"
    assert on.names == off.names, "critical sets differ"
    assert on.converged == off.converged
    torch.testing.assert_close(torch.tensor([n.score for n in on.top_ranked]),
                               torch.tensor([n.score for n in off.top_ranked]), rtol=1e-4, atol=1e-6)
    assert [n for n, _ in on.curve] == [n for n, _ in off.curve]
    torch.testing.assert_close(torch.tensor([v for _, v in on.curve]), torch.tensor([v for _, v in off.curve]),
                               rtol=1e-4, atol=1e-4)
    return on, off, (t1 - t0, t2 - t1)


@pytest.mark.parametrize("ranking", ["per_token", "mean"])
def test_stories_kernels_on_equals_off(stories, ranking):
    model, tok = stories
    on, off, _ = _compare(model, tok, max_tokens=64, k=16, epsilon=0.05, max_neurons=64, ranking=ranking)
    assert len(on.top_ranked) > 0


def test_compiled_ops_loaded():
    """The comparisons here are only meaningful with the compiled CPU ops: fail without them."""
    require_compiled_ops("cpu")


def test_smollm2_kernels_on_equals_off(smollm2):  # ~4 s idle, ~40 s on a loaded 2-core box
    model, tok = smollm2
    on, off, (t_on, t_off) = _compare(model, tok, max_tokens=48, k=8, epsilon=1.0, max_neurons=300)
    assert on.converged and len(on.neurons) > 0
    print(f"\nSmolLM2 find_critical: kernels on {t_on:.1f} s, off {t_off:.1f} s; {len(on.neurons)} critical neurons")


@pytest.mark.gpu
def test_stories_kernels_on_equals_off_cuda(stories):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import copy
    model, tok = stories
    model = copy.deepcopy(model).cuda()
    for backend in ("auto", "triton"):
        mp = pytest.MonkeyPatch()
        mp.setenv("ACHILLES_FAST_CUDA_BACKEND", backend)
        try:
            _compare(model, tok, max_tokens=64, k=16, epsilon=0.05, max_neurons=64)
        finally:
            mp.undo()
