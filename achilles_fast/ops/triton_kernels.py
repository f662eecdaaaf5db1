"""Triton kernels of the achilles_fast ops (GPU; tested on CPU tensors under ``TRITON_INTERPRET=1``).

Each public function has the signature of the custom op of the same name (see ``_registry.SCHEMAS``) and the
semantics of its reference in ``reference.py``. They are registered as the ``achilles_fast::triton_<name>`` ops
and, on CUDA without compiled CUDA kernels, as the CUDA kernels of the main ops.

Noise: ``triton.language.random.philox`` on counter (lo32(idx), hi32(idx), 0, 0) with key (lo32(seed),
hi32(seed)), then the ``tl.randn`` transform: the Philox words are bit-exact with every backend. On the GPU the
log / cos / sqrt are libdevice's precise ``logf`` / ``cosf`` and ``sqrt_rn`` (Triton's default ``tl.log`` /
``tl.cos`` are approximations), so the normals agree with the CPU / CUDA kernels to ~1 ulp.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
try:  # precise device functions on GPU (the interpreter has no libdevice: it uses numpy's float32 log / cos)
    from triton.language.extra import libdevice
    PRECISE = not INTERPRET
except Exception:  # pragma: no cover - older triton: tl.log / tl.cos
    libdevice = None
    PRECISE = False


@triton.jit
def _box_muller(u0, u1, PRECISE: tl.constexpr):
    if PRECISE:
        r = libdevice.sqrt_rn(-2.0 * libdevice.log(u0)) * libdevice.cos(6.283185307179586 * u1)
    else:
        r = tl.sqrt_rn(-2.0 * tl.log(u0)) * tl.cos(6.283185307179586 * u1)
    return r


# Launch options: on the GPU, keep `e + alpha * noise` as a rounded product then a rounded sum like the reference
# (Triton fuses it into an FMA by default); the interpreter takes no compile options.
_NO_FMA = {} if INTERPRET else {"enable_fp_fusion": False}


def _check_device(*ts):
    for t in ts:
        if t is not None and t.device.type != "cuda" and not INTERPRET:
            raise RuntimeError("the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


# ---------------------------------------------------------------------------------------------------------------
@triton.jit
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


def noisy_embeds(embeds, alpha, seed, k_start, k_count):
    _check_device(embeds)
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


# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _absdiff_kernel(acc_ptr, clean_ptr, noisy_ptr, K, TC, K_PER, PARTIAL: tl.constexpr, BLOCK: tl.constexpr):
    # program (i, y): BLOCK (t, c) elements, samples [y * K_PER, min(K, (y + 1) * K_PER))
    pid = tl.program_id(0)
    y = tl.program_id(1)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat (t, c)
    m = offs < TC
    cl = tl.load(clean_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    k0 = y * K_PER
    k1 = tl.minimum(K, k0 + K_PER)
    p = noisy_ptr + k0.to(tl.int64) * TC + offs
    for _k in range(k0, k1):
        x = tl.load(p, mask=m, other=0.0).to(tl.float32)
        s += tl.abs(x - cl)
        p += TC
    if PARTIAL:
        tl.store(acc_ptr + y.to(tl.int64) * TC + offs, s, mask=m)
    else:
        a = tl.load(acc_ptr + offs, mask=m, other=0.0)
        tl.store(acc_ptr + offs, a + s, mask=m)


_ABSDIFF_SPLITS = None  # tests force a K split under the interpreter


def _absdiff_splits(dev, blocks, K):
    if _ABSDIFF_SPLITS is not None:
        return max(1, min(int(_ABSDIFF_SPLITS), K))
    if dev.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    return max(1, min(triton.cdiv(4 * sms, blocks), K // 8, 65535))


def absdiff_accum_(acc, clean, noisy):
    _check_device(acc, clean, noisy)
    K, T, C = noisy.shape
    assert clean.shape == (T, C) and acc.dtype == torch.float32
    if K == 0 or T * C == 0:
        return None
    TC = T * C
    per_pos = acc.dim() == 2
    out = acc if (per_pos and acc.is_contiguous()) else torch.zeros((T, C), dtype=torch.float32, device=acc.device)
    BLOCK = 512
    blocks = triton.cdiv(TC, BLOCK)
    splits = _absdiff_splits(acc.device, blocks, K)
    cl, x = clean.contiguous(), noisy.contiguous()
    if splits == 1:
        _absdiff_kernel[(blocks, 1)](out, cl, x, K, TC, K, PARTIAL=False, BLOCK=BLOCK)
    else:  # small (t, c) plane: split K over programs, add the partial sums in a fixed order (deterministic)
        k_per = triton.cdiv(K, splits)
        part = torch.empty((splits, T, C), dtype=torch.float32, device=acc.device)
        _absdiff_kernel[(blocks, splits)](part, cl, x, K, TC, k_per, PARTIAL=True, BLOCK=BLOCK)
        out.add_(part.sum(0))
    if not per_pos:
        acc.add_(out.sum(0))  # sum over k, then over positions (reference order); deterministic
    elif out is not acc:
        acc.add_(out)
    return None


# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _gather_channels_kernel(w_ptr, s_ptr, ch_ptr, N_OUT, M, NCH, INNER, ZERO: tl.constexpr, RESTORE: tl.constexpr,
                            BLOCK: tl.constexpr):
    # weight viewed as [outer, NCH, INNER]; saved as [outer, M, INNER]; element e of saved <-> weight[o, ch[i], j]
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < N_OUT
    j = e % INNER
    r = e // INNER
    i = r % M
    o = r // M
    c = tl.load(ch_ptr + i, mask=m, other=0)
    src = (o * NCH + c) * INNER + j
    if RESTORE:
        v = tl.load(s_ptr + e, mask=m)
        tl.store(w_ptr + src, v, mask=m)
    elif ZERO:
        tl.store(w_ptr + src, tl.zeros([BLOCK], dtype=w_ptr.dtype.element_ty), mask=m)
    else:
        v = tl.load(w_ptr + src, mask=m)
        tl.store(s_ptr + e, v, mask=m)


def _channel_geometry(weight, dim):
    outer = 1
    for d in range(dim):
        outer *= weight.shape[d]
    inner = 1
    for d in range(dim + 1, weight.dim()):
        inner *= weight.shape[d]
    return outer, weight.shape[dim], inner


def mask_channels_(weight, channels, dim):
    _check_device(weight, channels)
    dim = dim % weight.dim()
    ch = channels.to(device=weight.device, dtype=torch.long).contiguous()
    if ch.numel() and (int(ch.min()) < 0 or int(ch.max()) >= weight.shape[dim]):
        raise IndexError(f"mask_channels_: channel index out of range [0, {weight.shape[dim]})")
    shape = list(weight.shape)
    shape[dim] = ch.numel()
    if not weight.is_contiguous():
        saved = weight.index_select(dim, ch).clone()
        weight.index_fill_(dim, ch, 0)
        return saved
    saved = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    n = saved.numel()
    if n:
        outer, nch, inner = _channel_geometry(weight, dim)
        BLOCK = 1024
        grid = (triton.cdiv(n, BLOCK),)
        for zero in (False, True):  # gather everything, then zero (duplicates keep their originals)
            _gather_channels_kernel[grid](weight, saved, ch, n, ch.numel(), nch, inner, ZERO=zero, RESTORE=False,
                                          BLOCK=BLOCK)
    return saved


def restore_channels_(weight, channels, saved, dim):
    _check_device(weight, channels, saved)
    dim = dim % weight.dim()
    ch = channels.to(device=weight.device, dtype=torch.long).contiguous()
    if not weight.is_contiguous():
        weight.index_copy_(dim, ch, saved)
        return None
    s = saved.to(weight.dtype).contiguous()
    n = s.numel()
    if n:
        outer, nch, inner = _channel_geometry(weight, dim)
        BLOCK = 1024
        _gather_channels_kernel[(triton.cdiv(n, BLOCK),)](weight, s, ch, n, ch.numel(), nch, inner, ZERO=False,
                                                          RESTORE=True, BLOCK=BLOCK)
    return None


# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _batched_mask_kernel(y_ptr, k_ptr, out_ptr, N, TC, C, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    b = offs // TC
    c = offs % C
    y = tl.load(y_ptr + offs, mask=m, other=0.0)
    k = tl.load(k_ptr + b * C + c, mask=m, other=0.0).to(y.dtype)
    if y.dtype == tl.float64:
        r = y * k
    else:
        r = (y.to(tl.float32) * k.to(tl.float32)).to(y.dtype)
    tl.store(out_ptr + offs, r, mask=m)


def batched_channel_mask(out, keep):
    _check_device(out, keep)
    B, T, C = out.shape
    y = out.contiguous()
    res = torch.empty_like(y)
    n = y.numel()
    if n:
        BLOCK = 1024
        _batched_mask_kernel[(triton.cdiv(n, BLOCK),)](y, keep.contiguous(), res, n, T * C, C, BLOCK=BLOCK)
    return res


# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _token_nll_kernel(h_ptr, w_ptr, t_ptr, m_ptr, s_ptr, tl_ptr, N, V, H, V_PER, stride_h, stride_w,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    # program (i, y): BLOCK_N tokens x vocabulary slice [y * V_PER, (y + 1) * V_PER), streamed in BLOCK_V tiles with
    # an online log-sum-exp; writes the slice's running max, sum of exp and target logit (0 if not in the slice).
    pid = tl.program_id(0)
    y = tl.program_id(1)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = rn < N
    tgt = tl.load(t_ptr + rn, mask=mn, other=-100)
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    t_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    v_lo = y * V_PER
    v_hi = tl.minimum(V, v_lo + V_PER)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        rv = v0 + tl.arange(0, BLOCK_V)
        mv = rv < v_hi
        acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            rh = h0 + tl.arange(0, BLOCK_H)
            mh = rh < H
            a = tl.load(h_ptr + rn[:, None].to(tl.int64) * stride_h + rh[None, :], mask=mn[:, None] & mh[None, :],
                        other=0.0).to(tl.float32)
            b = tl.load(w_ptr + rv[None, :].to(tl.int64) * stride_w + rh[:, None], mask=mh[:, None] & mv[None, :],
                        other=0.0).to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision="ieee")
        acc = tl.where(mv[None, :], acc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(acc, 1))
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(acc - m_new[:, None]), 1)
        m_i = m_new
        t_i += tl.sum(tl.where(rv[None, :] == tgt[:, None], acc, 0.0), 1)
    o = y.to(tl.int64) * N + rn
    tl.store(m_ptr + o, m_i, mask=mn)
    tl.store(s_ptr + o, s_i, mask=mn)
    tl.store(tl_ptr + o, t_i, mask=mn)


_NLL_SPLITS = None  # tests force a vocabulary split under the interpreter


def token_nll(hidden, lm_weight, targets):
    _check_device(hidden, lm_weight, targets)
    N, H = hidden.shape
    V = lm_weight.shape[0]
    if N == 0:
        return torch.empty((0,), dtype=torch.float32, device=hidden.device)
    h = hidden.contiguous()
    w = lm_weight.contiguous()
    t = targets.to(torch.long).contiguous()
    BLOCK_N, BLOCK_V, BLOCK_H = (16, 32, 32) if INTERPRET else (32, 128, 64)
    blocks = triton.cdiv(N, BLOCK_N)
    v_tiles = triton.cdiv(V, BLOCK_V)
    if _NLL_SPLITS is not None:
        splits = max(1, min(int(_NLL_SPLITS), v_tiles))
    elif hidden.device.type == "cuda":  # few tokens: split the vocabulary so every SM has work
        sms = torch.cuda.get_device_properties(hidden.device).multi_processor_count
        splits = max(1, min(triton.cdiv(4 * sms, blocks), v_tiles, 65535))
    else:
        splits = 1
    v_per = triton.cdiv(v_tiles, splits) * BLOCK_V
    splits = triton.cdiv(V, v_per)
    m = torch.empty((splits, N), dtype=torch.float32, device=h.device)
    s = torch.empty_like(m)
    tg = torch.empty_like(m)
    _token_nll_kernel[(blocks, splits)](h, w, t, m, s, tg, N, V, H, v_per, h.stride(0), w.stride(0),
                                        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H)
    lse = torch.logsumexp(m + torch.log(s), dim=0) if splits > 1 else m[0] + torch.log(s[0])
    nll = lse - tg.sum(0)
    return torch.where(t == -100, torch.zeros_like(nll), nll)
