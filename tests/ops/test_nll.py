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