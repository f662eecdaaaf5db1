"""token_nll: kernels vs the reference (achilles_fast/ops/nll.py)."""
from __future__ import annotations

import pytest
import torch

from achilles_fast.ops import nll
from achilles_fast.ops.nll import token_nll_ref

from ophelpers import BACKENDS, DTYPES, SMALL, device_of, kernel, opcheck, poisoned_empty


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_nll_matches_reference(backend, dtype):
    op = kernel(backend, "token_nll")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(5)
    cases = [(1, 24, 97), (7, 40, 300)] if backend == "triton" and SMALL else [(1, 64, 97), (7, 40, 1000),
                                                                               (115, 64, 4099)]
    if backend != "triton":  # N x V x 4 bytes over the CPU kernel's 4 MiB logits chunk: several vocabulary chunks
        cases.append((67, 24, 20011))
    for N, H, V in cases:
        h = torch.randn(N, H, generator=g).to(dtype)
        w = (torch.randn(V, H, generator=g) / H ** 0.5).to(dtype)
        t = torch.randint(0, V, (N,), generator=g)
        if N > 2:
            t[1] = -100  # ignore_index
            t[2] = V - 1
        with poisoned_empty():
            got = op(h.to(dev), w.to(dev), t.to(dev)).cpu()
        want = token_nll_ref(h, w, t)
        assert got.dtype == torch.float32 and got.shape == (N,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.triton
def test_triton_token_nll_vocab_split(monkeypatch):
    """The vocabulary-split path (partial log-sum-exp per slice, used on GPUs for few tokens) equals the reference."""
    launch = kernel("triton", "token_nll")
    dev = device_of("triton")
    g = torch.Generator().manual_seed(8)
    h, w = torch.randn(9, 24, generator=g), torch.randn(301, 24, generator=g) / 5
    t = torch.randint(0, 301, (9,), generator=g)
    t[0], t[1] = -100, 300
    want = token_nll_ref(h, w, t)
    for splits in (2, 3, 10):
        monkeypatch.setattr(nll, "SPLITS", splits)
        got = launch(h.to(dev), w.to(dev), t.to(dev)).cpu()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    opcheck(backend, "token_nll")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_token_nll_lowp_matches_reference(dtype, monkeypatch):
    """The low-precision head (stage2_dtype) chunked over the vocabulary equals its one-GEMM reference, and both
    stay near the fp32 NLL (the logits are rounded to ``dtype``)."""
    g = torch.Generator().manual_seed(11)
    monkeypatch.setattr(nll, "LOWP_CHUNK_BYTES", 4 * 13 * 256)  # a few chunks for the larger cases
    for N, H, V in [(1, 24, 97), (13, 40, 1001), (29, 72, 4099)]:
        h = torch.randn(N, H, generator=g)
        w = torch.randn(V, H, generator=g) / H ** 0.5
        t = torch.randint(0, V, (N,), generator=g)
        if N > 2:
            t[1], t[2] = -100, V - 1
        got = nll.token_nll_lowp(h.to(dtype), w.to(dtype), t)
        want = nll.token_nll_lowp_ref(h.to(dtype), w.to(dtype), t)
        want[t == -100] = 0
        assert got.dtype == torch.float32 and got.shape == (N,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        exact = token_nll_ref(h, w, t)
        exact[t == -100] = 0
        torch.testing.assert_close(got, exact, rtol=0, atol=0.05)


def test_token_nll_lowp_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="lm_weight is torch.float32"):
        nll.token_nll_lowp(torch.randn(3, 8).bfloat16(), torch.randn(11, 8), torch.zeros(3, dtype=torch.long))
