"""``absdiff_accum_``: Stage 1's sensitivity accumulator, ``acc += sum_k |noisy[k] - clean|`` in float32.

Kernels: reference (below; defines the semantics), C++ CPU (csrc/cpu), CUDA (csrc/cuda), Triton (below). The sums
are formed over k first, then (for a [C] accumulator) over positions, in that order on every backend.
"""
from __future__ import annotations

import torch

from . import _lib
from ._lib import tl, triton


def absdiff_accum_ref(acc: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> None:
    """acc += sum_k |noisy[k] - clean| in float32, in place.

    acc [T, C] (per position) or [C] (also summed over positions); clean [T, C]; noisy [k, T, C].
    """
    d = (noisy.float() - clean.float().unsqueeze(0)).abs().sum(0)  # [T, C]
    if acc.dim() == 1:
        d = d.sum(0)
    acc.add_(d)


def _fake(acc, clean, noisy):
    return None


# ---- Triton ------------------------------------------------------------------------------------------------------
@_lib.jit
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


SPLITS = None  # K split forced by the tests (under the interpreter); None: chosen from the GPU's SM count


def _splits(dev, blocks, K):
    if SPLITS is not None:
        return max(1, min(int(SPLITS), K))
    if dev.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    return max(1, min(triton.cdiv(4 * sms, blocks), K // 8, 65535))


def absdiff_accum_triton(acc, clean, noisy) -> None:
    """Triton launcher with the op's signature (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    _lib.check_triton_device(acc, clean, noisy)
    K, T, C = noisy.shape
    assert clean.shape == (T, C) and acc.dtype == torch.float32
    if K == 0 or T * C == 0:
        return None
    TC = T * C
    per_pos = acc.dim() == 2
    out = acc if (per_pos and acc.is_contiguous()) else torch.zeros((T, C), dtype=torch.float32, device=acc.device)
    BLOCK = 512
    blocks = triton.cdiv(TC, BLOCK)
    splits = _splits(acc.device, blocks, K)
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


# ---- op and public wrapper ---------------------------------------------------------------------------------------
_op = _lib.define("absdiff_accum_", "(Tensor(a!) acc, Tensor clean, Tensor noisy) -> ()", absdiff_accum_ref, _fake,
                  absdiff_accum_triton)


def absdiff_accum_(acc: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """acc [T, C] or [C] fp32 += sum_k |noisy [k, T, C] - clean [T, C]|; returns acc."""
    _op(acc, clean, noisy)
    return acc
