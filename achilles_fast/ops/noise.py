"""``noisy_embeds``: K noisy copies of the input embeddings, ``embeds + alpha * noise`` (Stage 1's perturbations).

Kernels: reference (below; defines the semantics), C++ CPU (csrc/cpu), CUDA (csrc/cuda), Triton (below). All
backends draw the same noise: the Philox words are bit-exact everywhere, the C++ CPU kernel is bit-identical to the
reference, and the GPU normals agree to ~1 ulp of the libdevice log / cos.

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

from . import _lib
from ._lib import tl, triton

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586


# ---- reference ---------------------------------------------------------------------------------------------------
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


def _fake(embeds, alpha, seed, k_start, k_count):
    torch._check(embeds.dim() == 2)
    return embeds.new_empty((k_count, embeds.shape[0], embeds.shape[1]))


# ---- Triton ------------------------------------------------------------------------------------------------------
# Noise: ``tl.random.philox`` on counter (lo32(idx), hi32(idx), 0, 0) with key (lo32(seed), hi32(seed)), then the
# ``tl.randn`` transform. On the GPU the log / cos / sqrt are libdevice's precise ``logf`` / ``cosf`` and
# ``sqrt_rn`` (Triton's default ``tl.log`` / ``tl.cos`` are approximations); the interpreter has no libdevice and
# uses numpy's float32 log / cos.
try:
    from triton.language.extra import libdevice
    PRECISE = not _lib.INTERPRET
except Exception:  # pragma: no cover - no triton, or an older one: tl.log / tl.cos
    libdevice = None
    PRECISE = False

# Launch options: on the GPU, keep `e + alpha * noise` as a rounded product then a rounded sum like the reference
# (Triton fuses it into an FMA by default); the interpreter takes no compile options.
_NO_FMA = {} if _lib.INTERPRET else {"enable_fp_fusion": False}


@_lib.jit
def _box_muller(u0, u1, PRECISE: tl.constexpr):
    if PRECISE:
        r = libdevice.sqrt_rn(-2.0 * libdevice.log(u0)) * libdevice.cos(6.283185307179586 * u1)
    else:
        r = tl.sqrt_rn(-2.0 * tl.log(u0)) * tl.cos(6.283185307179586 * u1)
    return r


@_lib.jit
def _noisy_embeds_kernel(e_ptr, out_ptr, alpha, seed, base, TH, BLOCK: tl.constexpr, PRECISE: tl.constexpr):
    # program (i, k): BLOCK elements of the [T, H] plane for sample k (no 64-bit modulo per element)
    pid = tl.program_id(0)
    k = tl.program_id(1)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # plane index
    m = offs < TH
    o = k.to(tl.int64) * TH + offs  # flat output index
    idx = o + base  # global element index (int64)
    c0 = (idx & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((idx >> 32) & 0xFFFFFFFF).to(tl.uint32)
    z = tl.zeros_like(c0)
    r0, r1, _, _ = tl.random.philox(seed, c0, c1, z, z)
    u0 = tl.maximum(tl.random.uint_to_uniform_float(r0), 1.0e-7)
    u1 = tl.random.uint_to_uniform_float(r1)
    noise = _box_muller(u0, u1, PRECISE)
    e = tl.load(e_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y = e + alpha * noise
    tl.store(out_ptr + o, y.to(out_ptr.dtype.element_ty), mask=m)


def noisy_embeds_triton(embeds, alpha, seed, k_start, k_count):
    """Triton launcher with the op's signature (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    _lib.check_triton_device(embeds)
    assert embeds.dim() == 2, f"embeds must be [T, H], got {tuple(embeds.shape)}"
    e = embeds.contiguous()
    T, H = e.shape
    out = torch.empty((k_count, T, H), dtype=e.dtype, device=e.device)
    n = out.numel()
    if n:
        alpha32 = float(torch.tensor(alpha, dtype=torch.float32))  # the reference rounds alpha to fp32
        BLOCK = 1024
        for k0 in range(0, k_count, 65535):  # grid axis 1 is limited to 65535
            kn = min(65535, k_count - k0)
            _noisy_embeds_kernel[(triton.cdiv(T * H, BLOCK), kn)](e, out[k0:k0 + kn], alpha32, int(seed),
                                                                  (int(k_start) + k0) * T * H, T * H, BLOCK=BLOCK,
                                                                  PRECISE=PRECISE, **_NO_FMA)
    return out


# ---- op and public wrapper ---------------------------------------------------------------------------------------
_op = _lib.define("noisy_embeds", "(Tensor embeds, float alpha, int seed, int k_start, int k_count) -> Tensor",
                  noisy_embeds_ref, _fake, noisy_embeds_triton)


def signed64(seed: int) -> int:
    """A 64-bit seed as the signed int the schema's ``int`` holds (the kernels read its two's complement bits)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s - (1 << 64) if s >= (1 << 63) else s


def noisy_embeds(embeds: torch.Tensor, alpha: float, seed: int, k_start: int, k_count: int) -> torch.Tensor:
    """embeds [T, H] -> [k_count, T, H]: embeds + alpha * Philox noise of samples k_start..k_start+k_count-1."""
    return _op(embeds, float(alpha), signed64(seed), int(k_start), int(k_count))
