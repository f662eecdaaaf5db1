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
    monkeypatch.setattr(nll, "CPU_LOGIT_CHUNK_BYTES", 4 * 13 * 256)  # a few chunks for the larger cases
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


needs_mkl = pytest.mark.skipif(not nll.mkl_packing_available(), reason="this torch has no MKL packed GEMM")


def _head_case(g, N, H, V):
    h = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) / H ** 0.5
    t = torch.randint(0, V, (N,), generator=g)
    if N > 2:
        t[1], t[2] = -100, V - 1
    return h, w, t


@needs_mkl
def test_token_nll_packed_matches_reference(monkeypatch):
    """The MKL-packed head over one vocabulary chunk, several, and a ragged last one equals the reference."""
    g = torch.Generator().manual_seed(17)
    monkeypatch.setattr(nll, "CPU_LOGIT_CHUNK_BYTES", 4 * 13 * 256)  # several chunks for the larger cases
    for N, H, V in [(1, 24, 97), (13, 40, 1001), (29, 72, 4099), (13, 576, 3001)]:
        h, w, t = _head_case(g, N, H, V)
        head = nll.PackedHead(w, N)
        assert len(head.chunks) == -(-V // nll.vocab_chunk(N, V)) and head.nbytes == w.numel() * 4
        got = nll.token_nll_packed(h, head, t)
        want = token_nll_ref(h, w, t)
        want[t == -100] = 0
        assert got.dtype == torch.float32 and got.shape == (N,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@needs_mkl
def test_token_nll_packed_walks_the_vocabulary_as_token_nll():
    """With token_nll's own chunk size, the packed head gives token_nll's values bit for bit wherever MKL's packed
    and plain GEMMs agree (NLLEvaluator checks that before it uses a packing), and within rounding elsewhere."""
    g = torch.Generator().manual_seed(19)
    cases = [(1, 24, 97), (67, 24, 20011), (128, 64, 40000), (13, 576, 3001)]  # the 2nd, 3rd: several chunks
    agree = 0
    for N, H, V in cases:
        h, w, t = _head_case(g, N, H, V)
        got, plain = nll.token_nll_packed(h, nll.PackedHead(w, N), t), nll.token_nll(h, w, t)
        agree += torch.equal(got, plain)
        torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)
    assert agree >= len(cases) - 1, f"bitwise equal on {agree} of {len(cases)} small heads"


@needs_mkl
def test_packed_head_bad_inputs_and_staleness():
    w = torch.randn(300, 16)
    head = nll.PackedHead(w, 5)
    with pytest.raises(ValueError, match="packed for 5 rows, hidden has 4"):
        nll.token_nll_packed(torch.randn(4, 16), head, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="float32 CPU weight"):
        nll.PackedHead(w.bfloat16(), 5)
    assert head.current(w, 5) and not head.current(w, 6)
    w.mul_(2)  # edited in place: the packing is stale
    assert not head.current(w, 5)
