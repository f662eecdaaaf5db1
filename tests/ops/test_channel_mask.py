"""mask_channels_ / restore_channels_: kernels vs the references (achilles_fast/ops/channel_mask.py)."""
from __future__ import annotations

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast.ops.channel_mask import channel_geometry, mask_channels_ref

from ophelpers import BACKENDS, DTYPES, device_of, kernel, opcheck, poisoned_empty


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mask_restore_exact(backend, dtype):
    mask, restore = kernel(backend, "mask_channels_"), kernel(backend, "restore_channels_")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(3)
    for shape, dim in (((576, 1536), 0), ((1536, 576), 1), ((172, 7), 0), ((4099,), 0), ((5, 6, 7), 1)):
        w0 = torch.randn(shape, generator=g).to(dtype)
        n = shape[dim]
        ch = torch.tensor(sorted({0, n - 1, n // 2, 3 % n}) + [n // 2], dtype=torch.long)  # a duplicate too
        w = w0.clone().to(dev)
        with poisoned_empty():
            saved = mask(w, ch.to(dev), dim)
        w_ref = w0.clone()
        saved_ref = mask_channels_ref(w_ref, ch, dim)
        assert torch.equal(w.cpu(), w_ref), "masked weight differs from the reference"
        assert torch.equal(saved.cpu(), saved_ref), "saved originals differ from the reference"
        assert (w.cpu().index_select(dim, ch) == 0).all()
        restore(w, ch.to(dev), saved, dim)
        assert torch.equal(w.cpu(), w0), "restore is not bit-exact"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_restore_noncontiguous(backend):
    mask, restore = kernel(backend, "mask_channels_"), kernel(backend, "restore_channels_")
    dev = device_of(backend)
    w0 = torch.randn(9, 12).t()  # [12, 9], non-contiguous
    w, ch = w0.clone().to(dev), torch.tensor([2, 7, 2])
    assert not w.is_contiguous()
    saved = mask(w, ch.to(dev), 1)
    w_ref = w0.clone()
    assert torch.equal(saved.cpu(), mask_channels_ref(w_ref, ch, 1)) and torch.equal(w.cpu(), w_ref)
    restore(w, ch.to(dev), saved, 1)
    assert torch.equal(w.cpu(), w0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_rejects_bad_channel(backend):
    mask = kernel(backend, "mask_channels_")
    dev = device_of(backend)
    w = torch.randn(4, 3, device=dev)
    w0 = w.clone()
    with pytest.raises((RuntimeError, IndexError)):
        mask(w, torch.tensor([1, 4], device=dev), 0)
    assert torch.equal(w, w0), "nothing may change when a channel is out of range"


def test_channel_geometry():
    assert channel_geometry(torch.empty(5, 6, 7), 1) == (5, 6, 7)
    assert channel_geometry(torch.empty(5, 6, 7), 0) == (1, 5, 42)
    assert channel_geometry(torch.empty(4099), 0) == (1, 4099, 1)


@pytest.mark.parametrize("enabled", [True, False], ids=["kernels", "reference"])
def test_public_mask_api_with_bias_and_conv1d_layout(enabled):
    w0, b0 = torch.randn(10, 6), torch.randn(6)
    w, b = w0.clone(), b0.clone()
    ch = torch.tensor([1, 4])
    with ops.use_kernels(enabled):
        sw, sb = ops.mask_channels_(w, b, ch, dim=1)  # GPT-2 Conv1D: columns
        assert (w[:, ch] == 0).all() and (b[ch] == 0).all() and torch.equal(sb, b0[ch])
        assert torch.equal(sw, w0[:, ch])
        ops.restore_channels_(w, b, ch, sw, sb, dim=1)
    assert torch.equal(w, w0) and torch.equal(b, b0)
    assert ops.mask_channels_(w, None, ch)[1] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    opcheck(backend, "mask_channels_")
    opcheck(backend, "restore_channels_")