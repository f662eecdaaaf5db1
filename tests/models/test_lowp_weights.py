"""LowPrecisionWeights: cast copies swapped in for a forward, the model's own Parameters always restored."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from achilles_fast.models.lowp_weights import LowPrecisionWeights

BIG = 1 << 40


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 11, bias=False))
    return m


def _snapshot(m):
    return {k: (v, v.detach().clone()) for k, v in m.named_parameters()}


def _same(m, snap):
    return all(p is snap[k][0] and torch.equal(p, snap[k][1]) for k, p in m.named_parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_swapped_uses_copies_and_restores(dtype):
    m = _model()
    snap = _snapshot(m)
    lw = LowPrecisionWeights(m, dtype, BIG)
    assert len(lw.modules) == 2
    with lw.swapped():
        assert m[1].weight.dtype == dtype and m[3].weight.dtype == dtype
        assert torch.equal(m[1].weight, snap["1.weight"][1].to(dtype))
        assert m[1].bias.dtype == torch.float32  # only weights are copied
        with torch.autocast("cpu", dtype=dtype):
            y = m(torch.tensor([[1, 2, 3]]))
        assert y.dtype == dtype
    assert _same(m, snap)
    assert lw.nbytes == (8 * 16 + 16 * 11) * 2


def test_restores_after_exception():
    m = _model()
    snap = _snapshot(m)
    lw = LowPrecisionWeights(m, torch.bfloat16, BIG)
    with pytest.raises(KeyboardInterrupt):
        with lw.swapped():
            raise KeyboardInterrupt
    assert _same(m, snap)


def test_copy_refreshed_after_in_place_edit():
    m = _model()
    lw = LowPrecisionWeights(m, torch.bfloat16, BIG)
    with lw.swapped():
        first = m[1].weight
    with lw.swapped():
        assert m[1].weight is first  # unchanged weight: the same copy
    with torch.no_grad():
        m[1].weight[3].zero_()
    with lw.swapped():
        assert m[1].weight is not first and not m[1].weight[3].any()


def test_tied_weights_copied_once():
    m = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    m[1].weight = m[0].weight
    lw = LowPrecisionWeights(m, torch.bfloat16, BIG)
    with lw.swapped():
        assert m[0].weight is m[1].weight
    assert lw.nbytes == 8 * 8 * 2


def test_over_budget_skips_copies():
    m = _model()
    lw = LowPrecisionWeights(m, torch.bfloat16, budget_bytes=100)
    assert lw.modules == [] and "over the memory budget" in lw.reason
    with lw.swapped():
        assert m[1].weight.dtype == torch.float32
