"""``mask_channels_`` / ``restore_channels_``: zero output channels of a weight in place, and put them back bit-exact
(an inverse pair: Stage 2 masks candidate neurons, evaluates, restores).

Kernels: reference (below; defines the semantics), C++ CPU (csrc/cpu), CUDA (csrc/cuda), Triton (below). The
weight is viewed as [outer, n, inner] around ``dim`` (``channel_geometry``; C++/CUDA: csrc/common/channel_geometry.h),
the saved originals of m channels as [outer, m, inner]. Duplicate channels: mask saves the original for each copy;
restore writes them in order (the last copy wins, like ``index_copy_``).
"""
from __future__ import annotations

import torch

from . import _lib
from ._lib import tl, triton


def mask_channels_ref(weight: torch.Tensor, channels: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero channels [m] of weight along dim in place; return their originals (weight's shape with m along dim).

    dim=0: nn.Linear weight [out, in] (rows); dim=1: GPT-2 Conv1D weight [in, out] (columns); a bias [out]: dim=0.
    """
    saved = weight.index_select(dim, channels).clone()
    weight.index_fill_(dim, channels, 0)
    return saved


def restore_channels_ref(weight: torch.Tensor, channels: torch.Tensor, saved: torch.Tensor, dim: int) -> None:
    """Inverse of ``mask_channels_ref``: copy the saved originals back, bit-exact."""
    weight.index_copy_(dim, channels, saved)


def _fake_mask(weight, channels, dim):
    shape = list(weight.shape)
    shape[dim] = channels.shape[0]
    return weight.new_empty(shape)


def _fake_restore(weight, channels, saved, dim):
    return None


# ---- Triton ------------------------------------------------------------------------------------------------------
def channel_geometry(weight: torch.Tensor, dim: int) -> tuple[int, int, int]:
    """(outer, n, inner): weight viewed as [outer, n, inner] around dim (already wrapped), n = weight.shape[dim]."""
    outer = 1
    for d in range(dim):
        outer *= weight.shape[d]
    inner = 1
    for d in range(dim + 1, weight.dim()):
        inner *= weight.shape[d]
    return outer, weight.shape[dim], inner


@_lib.jit
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


def _launch(weight, saved, ch, dim, zero, restore):
    n = saved.numel()
    if n:
        outer, nch, inner = channel_geometry(weight, dim)
        BLOCK = 1024
        _gather_channels_kernel[(triton.cdiv(n, BLOCK),)](weight, saved, ch, n, ch.numel(), nch, inner, ZERO=zero,
                                                          RESTORE=restore, BLOCK=BLOCK)


def mask_channels_triton(weight, channels, dim):
    """Triton launcher with the op's signature (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    _lib.check_triton_device(weight, channels)
    dim = dim % weight.dim()
    ch = channels.to(device=weight.device, dtype=torch.long).contiguous()
    if ch.numel() and (int(ch.min()) < 0 or int(ch.max()) >= weight.shape[dim]):
        raise IndexError(f"mask_channels_: channel index out of range [0, {weight.shape[dim]})")
    if not weight.is_contiguous():
        return mask_channels_ref(weight, ch, dim)
    shape = list(weight.shape)
    shape[dim] = ch.numel()
    saved = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    _launch(weight, saved, ch, dim, zero=False, restore=False)  # gather everything, then zero (duplicates keep
    _launch(weight, saved, ch, dim, zero=True, restore=False)  # their originals)
    return saved


def restore_channels_triton(weight, channels, saved, dim):
    """Triton launcher with the op's signature (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    _lib.check_triton_device(weight, channels, saved)
    dim = dim % weight.dim()
    ch = channels.to(device=weight.device, dtype=torch.long).contiguous()
    if not weight.is_contiguous():
        return restore_channels_ref(weight, ch, saved, dim)
    _launch(weight, saved.to(weight.dtype).contiguous(), ch, dim, zero=False, restore=True)
    return None


# ---- ops and public wrappers -------------------------------------------------------------------------------------
_mask = _lib.define("mask_channels_", "(Tensor(a!) weight, Tensor channels, int dim) -> Tensor", mask_channels_ref,
                    _fake_mask, mask_channels_triton)
_restore = _lib.define("restore_channels_", "(Tensor(a!) weight, Tensor channels, Tensor saved, int dim) -> ()",
                       restore_channels_ref, _fake_restore, restore_channels_triton)


def mask_channels_(weight: torch.Tensor, bias: torch.Tensor | None, channels: torch.Tensor, dim: int = 0):
    """Zero output channels [m] of weight (along dim) and bias in place; returns the saved originals
    (saved_weight [m, in] or [in, m], saved_bias [m] or None) for ``restore_channels_``."""
    saved_w = _mask(weight, channels, int(dim))
    saved_b = None if bias is None else _mask(bias, channels, 0)
    return saved_w, saved_b


def restore_channels_(weight: torch.Tensor, bias: torch.Tensor | None, channels: torch.Tensor, saved_w: torch.Tensor,
                      saved_b: torch.Tensor | None, dim: int = 0) -> None:
    """Inverse of ``mask_channels_``: copy the saved originals back into weight and bias, bit-exact."""
    _restore(weight, channels, saved_w, int(dim))
    if bias is not None and saved_b is not None:
        _restore(bias, channels, saved_b, 0)
