"""SequenceExact: a batched Linear call gives every sequence the bits of its own call; modules restored on exit."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from achilles_fast.models import batch_exact
from achilles_fast.models.batch_exact import SequenceExact


def _alone(x, w, b):
    return torch.cat([F.linear(x[i:i + 1], w, b) for i in range(x.shape[0])])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,T,K,N", [(4, 129, 2048, 640), (3, 17, 33, 7), (2, 5, 640, 256), (5, 1, 19, 3)])
def test_each_sequence_gets_its_own_calls_bits(B, T, K, N, dtype):
    """Fresh random inputs over odd shapes; (4, 129, 2048 -> 640) is Gemma-3-270M's down_proj, which MKL's batched
    float32 GEMM rounds unlike its per-sequence one on the 2-core dev box."""
    g = torch.Generator().manual_seed(B * T + K)
    x = torch.randn(B, T, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    se = SequenceExact(nn.Module())
    for bias in (b, None):
        for i in range(2):  # the first call checks the shape (timed apart), the second uses what it found
            checked = se.check_seconds
            assert torch.equal(se.linear(x, w, bias), _alone(x, w, bias))
            assert (se.check_seconds > checked) == (i == 0)
    assert se.stats()["shapes"] == 2


def test_a_shape_whose_batched_gemm_rounds_otherwise_runs_per_sequence(monkeypatch):
    """A stand-in GEMM that rounds batched calls otherwise: found at the first call, every later call of that shape
    per sequence; an exact stand-in keeps the batched call (one call, not B)."""
    x, w = torch.randn(3, 4, 8), torch.randn(5, 8)
    calls = []

    def fake(inp, weight, bias=None, bump=0.0):
        calls.append(inp.shape[0])
        out = torch.nn.functional.linear(inp, weight, bias)
        return out + bump if inp.shape[0] > 1 else out

    for bump, exact in ((1e-3, False), (0.0, True)):
        monkeypatch.setattr(batch_exact, "F", type("F", (), {"linear": staticmethod(
            lambda i, wt, bs=None, bump=bump: fake(i, wt, bs, bump))}))
        se = SequenceExact(nn.Module())
        assert torch.equal(se.linear(x, w, None), _alone(x, w, None))
        assert se.exact == {((3, 4, 8), (5, 8), torch.float32, True, torch.get_num_threads()): exact}
        calls.clear()
        assert torch.equal(se.linear(x, w, None), _alone(x, w, None))
        assert calls == ([3] if exact else [1, 1, 1])
        assert se.stats()["split_shapes"] == (0 if exact else 1)


class Scaled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_active_patches_plain_linears_only_and_restores_them():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), Scaled(8, 8), nn.Linear(8, 4, bias=False))
    hooked = nn.Linear(4, 4)
    hooked.forward = lambda x: x  # someone else's patch (accelerate's hooks set it like this)
    m.append(hooked)
    snap = {k: v.detach().clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 5, 8)
    se = SequenceExact(m)
    assert se.modules == [m[0], m[2]]
    plain = nn.Sequential(m[0], m[2])
    want = torch.cat([plain(x[i:i + 1]) for i in range(3)])  # each sequence alone
    with se.active():
        assert "forward" in vars(m[0]) and "forward" not in vars(m[1])
        assert torch.equal(plain(x), want)
    assert all("forward" not in vars(mod) for mod in m[:3]) and hooked.forward(x) is x
    with pytest.raises(KeyboardInterrupt):
        with se.active():
            raise KeyboardInterrupt
    assert all("forward" not in vars(mod) for mod in m[:3])
    assert all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())
