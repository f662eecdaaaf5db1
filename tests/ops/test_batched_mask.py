"""batched_channel_mask: kernels vs the reference (achilles_fast/ops/batched_mask.py), bit for bit."""
from __future__ import annotations

import pytest
import torch

from achilles_fast.ops.batched_mask import batched_channel_mask_ref

from ophelpers import BACKENDS, DTYPES, device_of, kernel, opcheck, poisoned_empty, shapes_for


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_channel_mask_exact(backend, dtype):
    op = kernel(backend, "batched_channel_mask")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(4)
    for B, T, C in shapes_for(backend, [(1, 1, 172), (3, 7, 576), (2, 115, 4099)]):
        y = torch.randn(B, T, C, generator=g).to(dtype)
        y[0, 0, 0] = -1.5  # masked negative -> -0.0 like the reference product
        keep = (torch.rand(B, C, generator=g) > 0.3).float()
        keep[0, 0] = 0
        with poisoned_empty():
            got = op(y.to(dev), keep.to(dev)).cpu()
        want = batched_channel_mask_ref(y, keep)
        assert got.dtype == dtype and torch.equal(got, want)
        assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           want.view(torch.int16 if dtype != torch.float32 else torch.int32)), "not bit-identical"


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    opcheck(backend, "batched_channel_mask")