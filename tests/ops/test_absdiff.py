"""absdiff_accum_: kernels vs the reference (achilles_fast/ops/absdiff.py)."""
from __future__ import annotations

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast.ops import absdiff
from achilles_fast.ops.absdiff import absdiff_accum_ref

from ophelpers import BACKENDS, DTYPES, device_of, kernel, opcheck, poisoned_empty, shapes_for

ABS_SHAPES = [(1, 172), (7, 4099), (115, 576)]


def _want(acc, clean, noisy):
    acc = acc.clone()
    absdiff_accum_ref(acc, clean, noisy)
    return acc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_position", [True, False], ids=["per_position", "reduced"])
def test_absdiff_matches_reference(backend, dtype, per_position):
    op = kernel(backend, "absdiff_accum_")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(2)
    for T, C in shapes_for(backend, ABS_SHAPES):
        for K in (1, 5):
            clean = torch.randn(T, C, generator=g).to(dtype)
            noisy = (clean.float() + torch.randn(K, T, C, generator=g)).to(dtype)
            acc0 = torch.rand((T, C) if per_position else (C,), generator=g) * 10  # not zeros: checks +=
            want = _want(acc0, clean, noisy)
            acc = acc0.clone().to(dev)
            with poisoned_empty():
                op(acc, clean.to(dev), noisy.to(dev))
            got = acc.cpu()
            assert not got.isnan().any()
            scale = K * (1 if per_position else T)
            torch.testing.assert_close(got, want, rtol=2e-6 * scale, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absdiff_noncontiguous_and_accumulates(backend):
    op = kernel(backend, "absdiff_accum_")
    dev = device_of(backend)
    clean = torch.randn(9, 40, device=dev)
    noisy = torch.randn(40, 9, 3, device=dev).permute(2, 1, 0)  # [3, 9, 40], non-contiguous
    acc = torch.zeros(40, 9, device=dev).t()  # [9, 40] non-contiguous accumulator
    op(acc, clean, noisy)
    op(acc, clean, noisy)
    want = _want(torch.zeros(9, 40), clean.cpu(), noisy.cpu()) * 2
    torch.testing.assert_close(acc.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_triton_absdiff_k_split(monkeypatch):
    """The K-split path (partial sums over sample slices, used on GPUs for small planes) equals the reference."""
    launch = kernel("triton", "absdiff_accum_")
    dev = device_of("triton")
    g = torch.Generator().manual_seed(7)
    clean, noisy = torch.randn(7, 172, generator=g), torch.randn(11, 7, 172, generator=g)
    for splits in (2, 3, 11):
        monkeypatch.setattr(absdiff, "SPLITS", splits)
        for shape in ((7, 172), (172,)):
            acc = torch.rand(shape, generator=g)
            want = _want(acc, clean, noisy)
            got = acc.clone().to(dev)
            launch(got, clean.to(dev), noisy.to(dev))
            torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    opcheck(backend, "absdiff_accum_")


def test_public_wrapper_returns_acc():
    acc, clean, noisy = torch.zeros(4), torch.randn(3, 4), torch.randn(2, 3, 4)
    for enabled in (True, False):
        with ops.use_kernels(enabled):
            assert ops.absdiff_accum_(acc, clean, noisy) is acc
