"""``token_nll``: per-token negative log-likelihood under an LM head, without materialising the [N, V] logits
(perplexity of the masked model).

Kernels: reference (below; defines the semantics), C++ CPU and CUDA (both csrc/common/token_nll.h: ATen ops chunked
over the vocabulary with an online log-sum-exp), Triton (below). Targets equal to -100 give 0 (ignore_index).
``token_nll_lowp``: the low-precision variant (``stage2_dtype``): logits from a GEMM in the inputs' dtype, the
log-sum-exp in float32.
"""
from __future__ import annotations

import torch

from . import _lib
from ._lib import tl, triton


def token_nll_ref(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in float32: hidden [N, H], lm_weight [V, H], targets [N] -> [N]."""
    logits = hidden.float() @ lm_weight.float().t()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def token_nll_lowp_ref(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in float32 of logits computed in the inputs' dtype: hidden [N, H], lm_weight [V, H] -> [N]."""
    logits = torch.nn.functional.linear(hidden, lm_weight).float()  # [N, V]
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


# fp32-equivalent logits per vocabulary chunk of token_nll_lowp (as kCpuLogitChunkBytes: the chunk stays in cache;
# Gemma-3-270M's head, N=150, H=640, 2 cores, bf16: 0.066 s chunked against 0.13 s in one GEMM, fp32 0.16 s)
LOWP_CHUNK_BYTES = 4 << 20


def token_nll_lowp(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``token_nll_lowp_ref`` chunked over the vocabulary with an online log-sum-exp: hidden [N, H] and lm_weight
    [V, H] in one low dtype (bf16/fp16), targets [N] (-100 -> 0) -> NLL [N] float32."""
    N, V = hidden.shape[0], lm_weight.shape[0]
    if lm_weight.dtype != hidden.dtype:
        raise TypeError(f"token_nll_lowp: hidden is {hidden.dtype} but lm_weight is {lm_weight.dtype}")
    vchunk = max(256, min(V, LOWP_CHUNK_BYTES // (4 * max(N, 1)) // 256 * 256))
    lse = hidden.new_full((N,), -float("inf"), dtype=torch.float32)
    tgt_logit = hidden.new_zeros((N,), dtype=torch.float32)
    for v0 in range(0, V, vchunk):
        logits = torch.nn.functional.linear(hidden, lm_weight[v0:v0 + vchunk]).float()  # [N, len]
        inside = (targets >= v0) & (targets < v0 + logits.shape[1])
        local = (targets - v0).clamp(0, logits.shape[1] - 1).unsqueeze(1)
        tgt_logit = torch.where(inside, logits.gather(1, local).squeeze(1), tgt_logit)
        lse = torch.logaddexp(lse, logits.logsumexp(1))
    nll = lse - tgt_logit
    return torch.where(targets == -100, torch.zeros_like(nll), nll)


def _fake(hidden, lm_weight, targets):
    return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)


# ---- Triton ------------------------------------------------------------------------------------------------------
@_lib.jit
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


SPLITS = None  # vocabulary split forced by the tests (under the interpreter); None: chosen from the GPU's SM count


def token_nll_triton(hidden, lm_weight, targets):
    """Triton launcher with the op's signature (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    _lib.check_triton_device(hidden, lm_weight, targets)
    N, H = hidden.shape
    V = lm_weight.shape[0]
    if N == 0:
        return torch.empty((0,), dtype=torch.float32, device=hidden.device)
    h = hidden.contiguous()
    w = lm_weight.contiguous()
    t = targets.to(torch.long).contiguous()
    BLOCK_N, BLOCK_V, BLOCK_H = (16, 32, 32) if _lib.INTERPRET else (32, 128, 64)
    blocks = triton.cdiv(N, BLOCK_N)
    v_tiles = triton.cdiv(V, BLOCK_V)
    if SPLITS is not None:
        splits = max(1, min(int(SPLITS), v_tiles))
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


# ---- op and public wrapper ---------------------------------------------------------------------------------------
_op = _lib.define("token_nll", "(Tensor hidden, Tensor lm_weight, Tensor targets) -> Tensor", token_nll_ref, _fake,
                  token_nll_triton)


def token_nll(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [N] float32 of hidden [N, H] under lm_weight [V, H] (targets [N]; -100 -> 0)."""
    return _op(hidden, lm_weight, targets)
