"""Linear layers whose rows in a batched CPU forward are bit-identical to a forward of each sequence alone.

A GEMM's rows do not depend on each other mathematically, but the CPU BLAS picks its blocking from the row count:
MKL's float32 GEMM of [516 x 2048] @ [2048 x 640] (Gemma-3-270M's down_proj, 4 sequences of 129 tokens) rounds some
rows unlike [129 x 2048] @ [2048 x 640], while the [516 x 640] ones (q/k/v/gate/up) and the LM head agree. Inside
``SequenceExact(model).active()`` every plain ``nn.Linear`` called on a [B, T, H] input with B > 1 returns, per
sequence, the bits its B=1 call would: the first call of each shape computes both and keeps the batched GEMM only
where every sequence's rows agree; other shapes run sequence by sequence (Stage 2 evaluates several prefixes per
forward on CPU with curves equal to one prefix per forward).

Only the modules' ``forward`` attribute is set (and removed on exit, also after an exception); weights are never
touched. Subclasses of ``nn.Linear`` (quantized layers), modules with their own patched ``forward`` (accelerate's
offload hooks) and offloaded modules are left alone.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .devices import offloaded

ShapeKey = Tuple[Tuple[int, ...], Tuple[int, ...], torch.dtype, bool, int]


class SequenceExact:
    """The plain CPU ``nn.Linear`` modules of ``model`` and, per call shape, whether the batched GEMM is exact."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.exact: Dict[ShapeKey, bool] = {}  # shape -> the batched GEMM gives every sequence's own bits
        self.check_seconds = 0.0  # time of the extra GEMM of each shape's first call (not part of a forward's cost)

    @functools.cached_property
    def modules(self) -> List[nn.Linear]:
        """The modules ``active()`` patches (found at its first use: most evaluators never share a forward)."""
        return [m for m in self.model.modules() if type(m).forward is nn.Linear.forward and "forward" not in vars(m)
                and m.weight.device.type == "cpu" and not offloaded(m)]

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` whose sequence b (x [B, T, H]) equals ``F.linear(x[b:b+1], ...)`` bitwise."""
        if x.dim() != 3 or x.shape[0] == 1:
            return F.linear(x, weight, bias)
        key = (tuple(x.shape), tuple(weight.shape), weight.dtype, bias is None, torch.get_num_threads())
        ok = self.exact.get(key)
        if ok:
            return F.linear(x, weight, bias)
        alone = [F.linear(x[b:b + 1], weight, bias) for b in range(x.shape[0])]  # B x [1, T, N]
        out = torch.cat(alone)  # [B, T, N]
        if ok is None:
            t0 = time.perf_counter()
            self.exact[key] = torch.equal(F.linear(x, weight, bias), out)
            self.check_seconds += time.perf_counter() - t0
        return out

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside: the listed modules compute through ``linear``; their own ``forward`` is back on exit."""
        patched: List[nn.Linear] = []
        try:
            for m in self.modules:
                m.forward = (lambda mod: lambda x: self.linear(x, mod.weight, mod.bias))(m)
                patched.append(m)
            yield
        finally:
            for m in patched:
                del m.forward

    def stats(self) -> Dict[str, int]:
        """Call shapes seen and how many needed a sequence-by-sequence GEMM."""
        return {"shapes": len(self.exact), "split_shapes": sum(not v for v in self.exact.values())}
