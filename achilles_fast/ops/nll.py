"""``token_nll``: per-token negative log-likelihood under an LM head, without materialising the [N, V] logits
(perplexity of the masked model).

Kernels: reference (below; defines the semantics), C++ CPU and CUDA (both csrc/common/token_nll.h: ATen ops chunked
over the vocabulary with an online log-sum-exp), Triton (below). Targets equal to -100 give 0 (ignore_index).
``token_nll_lowp``: the low-precision variant (``stage2_dtype``): logits from a GEMM in the inputs' dtype, the
log-sum-exp in float32. ``token_nll_packed``: float32 logits from MKL-packed head chunks (``PackedHead``, CPU), for
Stage 2's hundreds of evaluations on one head.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch.nn.functional as F

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


# fp32 logits per vocabulary chunk on CPU: csrc/common/token_nll.h's kCpuLogitChunkBytes (measured there), also used by
# the Python variants below, so that token_nll_packed walks the vocabulary as token_nll does and equals it bitwise
CPU_LOGIT_CHUNK_BYTES = 4 << 20


def vocab_chunk(rows: int, vocab: int) -> int:
    """Vocabulary rows per chunk for ``rows`` hidden rows: token_nll.h's rule (multiples of 256, <= 4 MiB fp32)."""
    return max(256, min(vocab, CPU_LOGIT_CHUNK_BYTES // (4 * max(rows, 1)) // 256 * 256))


def _online_nll(chunks: Iterable[Tuple[int, torch.Tensor]], targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """NLL [N] float32 from vocabulary chunks of logits ``(v0, logits [N, len])`` of a [vocab]-wide head, with an
    online log-sum-exp (each chunk is overwritten: the caller's GEMM output); targets [N] (-100 -> 0). The Python
    form of csrc/common/token_nll.h's loop, op for op, for the GEMMs the C++ op does not make (low precision,
    MKL-packed)."""
    N = targets.shape[0]
    m_run = torch.full((N,), -float("inf"), dtype=torch.float32, device=targets.device)  # running max
    s_run = torch.zeros((N,), dtype=torch.float32, device=targets.device)  # running sum of exp(logit - m_run)
    tgt_logit = torch.zeros_like(s_run)
    for v0, logits in chunks:
        logits = logits.float()
        if logits.shape[1] == vocab:  # a single chunk: -log_softmax at the target (token_nll.h's path)
            nll = -torch.log_softmax(logits, 1).gather(1, targets.clamp(0, vocab - 1).unsqueeze(1)).squeeze(1)
            return torch.where(targets == -100, torch.zeros_like(nll), nll)
        inside = (targets >= v0) & (targets < v0 + logits.shape[1])
        local = (targets - v0).clamp(0, logits.shape[1] - 1).unsqueeze(1)
        tgt_logit = torch.where(inside, logits.gather(1, local).squeeze(1), tgt_logit)
        m_new = torch.maximum(m_run, logits.amax(1))
        s_run = s_run.mul_((m_run - m_new).exp_()).add_(logits.sub_(m_new.unsqueeze(1)).exp_().sum(1))
        m_run = m_new
    nll = s_run.log_().add_(m_run).sub_(tgt_logit)
    return torch.where(targets == -100, torch.zeros_like(nll), nll)


def token_nll_lowp(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``token_nll_lowp_ref`` chunked over the vocabulary with an online log-sum-exp: hidden [N, H] and lm_weight
    [V, H] in one low dtype (bf16/fp16), targets [N] (-100 -> 0) -> NLL [N] float32."""
    N, V = hidden.shape[0], lm_weight.shape[0]
    if lm_weight.dtype != hidden.dtype:
        raise TypeError(f"token_nll_lowp: hidden is {hidden.dtype} but lm_weight is {lm_weight.dtype}")
    vc = vocab_chunk(N, V)  # Gemma-3-270M's head, N=150, H=640, 2 cores, bf16: 0.066 s chunked, 0.13 s in one GEMM
    return _online_nll(((v0, F.linear(hidden, lm_weight[v0:v0 + vc])) for v0 in range(0, V, vc)), targets, V)


# ---- MKL-packed LM head (CPU float32) ----------------------------------------------------------------------------
# Gemma-3-270M's head (N=128 x V=262144 x H=640), 2 cores, fp32: token_nll's plain GEMM chunks run at 280 GFLOP/s
# (0.154 s), packed ones at 352-361 GFLOP/s (0.119-0.122 s) for chunks of 2048-32768 rows (265 at 65536), so the
# packed chunks keep token_nll's size (``vocab_chunk``); the packing allocates ~2x a chunk (MKL's size) but touches
# ~1x (RSS +642 MB for the 640 MB head).


def mkl_packing_available() -> bool:
    """True where torch was built with MKL and has the packed-GEMM ops inductor uses (x86 CPU builds)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


class PackedHead:
    """A float32 CPU lm_weight [V, H] as MKL-packed vocabulary chunks for GEMMs of exactly ``rows`` hidden rows
    (``token_nll_packed``). ``current(w, rows)``: still valid for ``w`` (not edited in place since) and ``rows``."""

    def __init__(self, lm_weight: torch.Tensor, rows: int):
        w = lm_weight.detach()
        if w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2:
            raise TypeError(f"PackedHead: a 2-D float32 CPU weight, got {w.dtype} {tuple(w.shape)} on {w.device}")
        self.rows = int(rows)
        self._key = (lm_weight._version, lm_weight.data_ptr())
        self.vocab = w.shape[0]
        vc = vocab_chunk(self.rows, self.vocab)
        self.chunks = [(v0, w[v0:v0 + vc], torch.ops.mkl._mkl_reorder_linear_weight(w[v0:v0 + vc], self.rows))
                       for v0 in range(0, self.vocab, vc)]
        self.nbytes = w.numel() * 4  # resident (measured above), not MKL's allocation

    def current(self, lm_weight: torch.Tensor, rows: int) -> bool:
        return rows == self.rows and self._key == (lm_weight._version, lm_weight.data_ptr())


def token_nll_packed(hidden: torch.Tensor, head: PackedHead, targets: torch.Tensor) -> torch.Tensor:
    """``token_nll`` over a ``PackedHead``: hidden [head.rows, H] float32 CPU, targets [N] -> NLL [N] float32.
    Bitwise equal to ``token_nll`` where MKL's packed and plain GEMMs agree (tests/ops/test_nll.py: small heads)."""
    if hidden.shape[0] != head.rows:
        raise ValueError(f"token_nll_packed: the head is packed for {head.rows} rows, hidden has {hidden.shape[0]}")
    mkl_linear = torch.ops.mkl._mkl_linear
    return _online_nll(((v0, mkl_linear(hidden, p, w, None, head.rows)) for v0, w, p in head.chunks), targets,
                       head.vocab)


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
