"""``batched_channel_mask``: a different channel mask per batch element (Stage 2 evaluates B candidate prefixes in
one batched forward), ``out[b, t, c] * keep[b, c]``.

Kernels: reference (below; defines the semantics), C++ CPU (csrc/cpu), CUDA (csrc/cuda), Triton (below); all
bit-identical (keep is rounded to out's dtype, the product formed in float32 for half types, so a masked channel
is an exact zero: -0.0 for a negative value, like the reference product).
"""
from __future__ import annotations

import torch

from . import _lib
from ._lib import tl, triton


def batched_channel_mask_ref(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out [B, T, C] * keep [B, C] (0/1) broadcast over positions; a new tensor (zeros exactly)."""
    return out * keep.to(out.dtype).unsqueeze(1)


def _fake(out, keep):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


# ---- Triton ------------------------------------------------------------------------------------------------------
@_lib.jit
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


def batched_channel_mask_triton(out, keep):
    """Triton launcher with the op's signature (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    _lib.check_triton_device(out, keep)
    B, T, C = out.shape
    y = out.contiguous()
    res = torch.empty_like(y)
    n = y.numel()
    if n:
        BLOCK = 1024
        _batched_mask_kernel[(triton.cdiv(n, BLOCK),)](y, keep.contiguous(), res, n, T * C, C, BLOCK=BLOCK)
    return res


# ---- op and public wrapper ---------------------------------------------------------------------------------------
_op = _lib.define("batched_channel_mask", "(Tensor out, Tensor keep) -> Tensor", batched_channel_mask_ref, _fake,
                  batched_channel_mask_triton)


def batched_channel_mask(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out [B, T, C] with keep [B, C] applied per batch element (0 -> exact zero); a new tensor."""
    return _op(out, keep)
