"""End to end: find_critical with the kernels on (C++ CPU ops here) == with the kernels off (PyTorch references).

Same ranking (names, in order), same critical set, same convergence, scores and curve equal to float tolerance;
weights bit-identical afterwards. The GPU variant runs the CUDA / Triton kernels (marked gpu).
"""
from __future__ import annotations

import time

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast import find_critical

from conftest import assert_bit_identical, weights_snapshot


def _compare(model, tok, **kw):
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


def test_kernels_really_ran_on_cpu():
    """The comparison above is only meaningful when the compiled CPU ops exist: say so when they do not."""
    info = ops.backend_info()
    if not info["cpp"]:
        pytest.skip(f"compiled CPU ops unavailable ({info['error']}): kernels-on ran the references")
    assert info["cpu_ops"]


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
