"""Pure-PyTorch references for every achilles_fast op.

These define the semantics. The Triton, CUDA and C++ kernels must match them (bit-exact for integer
parts such as the Philox stream, within dtype tolerance for floating point results).

Noise spec (shared by every backend)
------------------------------------
noise[k, t, h] for the k-th noisy sample, position t, hidden unit h is one standard normal drawn from a
counter-based Philox4x32-10 stream:

    idx            = ((k_start + k) * T + t) * H + h              (int64 global element index)
    counter        = (lo32(idx), hi32(idx), 0, 0)
    key            = (lo32(seed), hi32(seed))
    r0, r1, _, _   = philox4x32_10(counter, key)
    u_i            = uint_to_uniform(r_i)   = (int32(r_i) < 0 ? -int32(r_i)-1 : int32(r_i)) * 4.6566127342e-10
    noise          = sqrt(-2 ln max(u0, 1e-7)) * cos(2 pi u1)

This is the same construction as ``triton.language.randn`` (which uses counter = (offset, 0, 0, 0)),
extended to 64-bit element indices. The value depends only on (seed, k, t, h, T, H), never on how the
K samples are chunked or launched.
"""
from __future__ import annotations

import torch

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586


def _umulhi(a: int, b: torch.Tensor) -> torch.Tensor:
    """High 32 bits of a 32x32-bit product, on int64 tensors holding uint32 values."""
    # a * b can reach 2**64: split b into 16-bit halves so every partial product fits in int64.
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    lo = a * b_lo  # < 2**48
    hi = a * b_hi  # < 2**48
    return ((hi + (lo >> 16)) >> 16) & MASK32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32 with 10 rounds; counters are int64 tensors holding uint32 values."""
    for _ in range(10):
        _c0, _c2 = c0, c2
        c0 = _umulhi(PHILOX_ROUND_B, _c2) ^ c1 ^ k0
        c2 = _umulhi(PHILOX_ROUND_A, _c0) ^ c3 ^ k1
        c1 = (PHILOX_ROUND_B * _c2) & MASK32
        c3 = (PHILOX_ROUND_A * _c0) & MASK32
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def _uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    x = torch.where(x >= 2**31, x - 2**32, x)  # reinterpret as int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * UNIFORM_SCALE


def philox_normal(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """Standard normals for int64 element indices ``idx`` (any shape) -> float32, same shape."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    c0 = idx & MASK32
    c1 = (idx >> 32) & MASK32
    zero = torch.zeros_like(idx)
    r0, r1, _, _ = philox4x32_10(c0, c1, zero, zero, seed & MASK32, (seed >> 32) & MASK32)
    u0 = _uint_to_uniform(r0).clamp_min(1e-7)
    u1 = _uint_to_uniform(r1)
    return torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(TWO_PI * u1)


def noisy_embeds_ref(embeds: torch.Tensor, alpha: float, seed: int, k_start: int, k_count: int) -> torch.Tensor:
    """embeds [T, H] -> [k_count, T, H] = embeds + alpha * noise(seed, k_start + k), in embeds.dtype.

    The sum is formed in float32 and rounded once to the output dtype.
    """
    T, H = embeds.shape
    idx = torch.arange(k_count * T * H, device=embeds.device, dtype=torch.int64) + k_start * T * H
    noise = philox_normal(seed, idx).view(k_count, T, H)
    return (embeds.float().unsqueeze(0) + alpha * noise).to(embeds.dtype)


def absdiff_accum_ref(acc: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """acc += sum_k |noisy[k] - clean| in float32.

    acc [T, C] (per position) or [C] (also summed over positions); clean [T, C]; noisy [k, T, C].
    """
    d = (noisy.float() - clean.float().unsqueeze(0)).abs().sum(0)  # [T, C]
    if acc.dim() == 1:
        d = d.sum(0)
    acc.add_(d)
    return acc


def mask_rows_ref(weight: torch.Tensor, bias: torch.Tensor | None, channels: torch.Tensor, dim: int = 0):
    """Zero output channels of a weight in place; return the saved originals for restore.

    dim=0: nn.Linear weight [out, in] (rows); dim=1: GPT-2 Conv1D weight [in, out] (columns).
    Returns (saved_weight [n, in] or [in, n], saved_bias [n] or None).
    """
    saved_w = weight.index_select(dim, channels).clone()
    weight.index_fill_(dim, channels, 0)
    saved_b = None
    if bias is not None:
        saved_b = bias.index_select(0, channels).clone()
        bias.index_fill_(0, channels, 0)
    return saved_w, saved_b


def restore_rows_ref(weight, bias, channels, saved_w, saved_b, dim: int = 0) -> None:
    """Inverse of ``mask_rows_ref``: copy the saved originals back, bit-exact."""
    weight.index_copy_(dim, channels, saved_w)
    if bias is not None and saved_b is not None:
        bias.index_copy_(0, channels, saved_b)


def batched_channel_mask_ref(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out [B, T, C] * keep [B, C] (0/1) broadcast over positions; a new tensor (zeros exactly)."""
    return out * keep.to(out.dtype).unsqueeze(1)


def token_nll_ref(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in float32: hidden [N, H], lm_weight [V, H], targets [N] -> [N]."""
    logits = hidden.float() @ lm_weight.float().t()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")
