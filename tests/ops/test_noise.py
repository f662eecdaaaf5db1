"""noisy_embeds: kernels vs the reference (achilles_fast/ops/noise.py), and the noise's own properties."""
from __future__ import annotations

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast.ops.noise import noisy_embeds_ref, signed64

from ophelpers import BACKENDS, DTYPES, SMALL, device_of, kernel, opcheck, poisoned_empty, shapes_for, tol

NOISE_SHAPES = [(1, 172), (7, 576), (115, 172), (3, 4099)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_embeds_matches_reference(backend, dtype):
    op = kernel(backend, "noisy_embeds")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(1)
    for T, H in shapes_for(backend, NOISE_SHAPES):
        e = torch.randn(T, H, generator=g).to(dtype)
        for seed, k0, kc in ((0, 0, 2), (2**40 + 7, 3, 1), (2**64 - 1, 1, 2)):
            with poisoned_empty():
                got = op(e.to(dev), 5.0, signed64(seed), k0, kc).cpu()
            want = noisy_embeds_ref(e, 5.0, seed, k0, kc)
            assert got.dtype == dtype and got.shape == (kc, T, H)
            assert not got.isnan().any()
            if backend == "cpp":  # integer part in C++, float part with the reference's own ATen ops
                assert torch.equal(got, want), "C++ noisy_embeds must be bit-identical to the CPU reference"
            rtol, atol = tol(dtype)
            torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_values_match_philox_spec(backend):
    """alpha = 1 on zero embeddings gives the noise itself: every value within ~1e-6 of the reference.

    A wrong Philox word would give an unrelated normal (error O(1)), so this checks the integer stream is exact.
    """
    op = kernel(backend, "noisy_embeds")
    T, H = 5, 333
    e = torch.zeros(T, H)
    for seed in (0, 1234567, 2**33 + 5, 2**63 + 11):
        got = op(e.to(device_of(backend)), 1.0, signed64(seed), 7, 3).cpu()
        want = noisy_embeds_ref(e, 1.0, seed, 7, 3)
        err = (got - want).abs() / want.abs().clamp_min(1.0)
        assert err.max().item() < 2e-6, err.max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_reproducible_and_chunk_independent(backend):
    op = kernel(backend, "noisy_embeds")
    dev = device_of(backend)
    e = torch.randn(7, 99, device=dev)
    a = op(e, 3.0, 42, 0, 6)
    assert torch.equal(a, op(e, 3.0, 42, 0, 6)), "same seed must give the same bits"
    parts = torch.cat([op(e, 3.0, 42, 0, 1), op(e, 3.0, 42, 1, 3), op(e, 3.0, 42, 4, 2)])
    assert torch.equal(a, parts), "noise must not depend on how the K samples are chunked"
    assert not torch.equal(a, op(e, 3.0, 43, 0, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_statistics(backend):
    """Standard normal: mean, std, tails, and no correlation across k, t and h."""
    op = kernel(backend, "noisy_embeds")
    K, T, H = (8, 16, 512) if backend == "triton" and SMALL else (16, 32, 1024)
    z = op(torch.zeros(T, H, device=device_of(backend)), 1.0, 2024, 0, K).cpu().double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / n ** 0.5
    assert abs(z.std().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs((z.abs() > 1.96).double().mean().item() - 0.05) < 5 * (0.05 * 0.95 / n) ** 0.5
    for a, b in ((z[1:], z[:-1]), (z[:, 1:], z[:, :-1]), (z[:, :, 1:], z[:, :, :-1])):  # along k, t, h
        corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
        assert abs(corr.item()) < 5 / a.numel() ** 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    opcheck(backend, "noisy_embeds")


def test_public_wrapper_seeds_and_kernels_off():
    """The wrapper takes any 64-bit seed; use_kernels(False) runs the reference itself."""
    e = torch.randn(5, 17)
    for seed in (9, 2**64 - 3):
        with ops.use_kernels(False):
            assert not ops.kernels_enabled()
            a = ops.noisy_embeds(e, 2.0, seed, 1, 2)
        assert ops.kernels_enabled()
        assert torch.equal(a, noisy_embeds_ref(e, 2.0, seed, 1, 2))
        torch.testing.assert_close(ops.noisy_embeds(e, 2.0, seed, 1, 2), a, rtol=0, atol=5e-5)
