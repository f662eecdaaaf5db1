"""Round-to-nearest (RTN) quantisation: symmetric, one scale per output channel (or per group of ``group_size``
input entries of a channel), b bits -> integer codes in [-(2^(b-1) - 1), 2^(b-1) - 1].

``rtn_codes`` / ``dequantize`` are the op (float32 arithmetic, any weight layout via ``dim``); ``quantized`` applies
it in place to every decoder-block Linear weight, protected values kept in full precision (and left out of their
group's scale), and restores the originals bit-exact on exit.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .params import check_bits, check_group_size
from .weights import WeightEdits, block_weights


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _grouped(x: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    """[C, I] -> [C, G, g] (zero-padded: zeros change no absmax)."""
    C, I = x.shape
    g = I if group_size is None else min(group_size, I)
    return F.pad(x, (0, (-I) % g)).view(C, -1, g)


def rtn_codes(w: torch.Tensor, bits: int, group_size: Optional[int] = None, dim: int = 0,
              keep: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight (2-D, output channels along ``dim``) -> (codes [C, G, g] int8 in ±qmax, scales [C, G, 1] float32),
    channels first, each channel's I inputs zero-padded to G groups of g. ``keep`` (bool, like w): values left out
    of the scale (their codes are meaningless; ``dequantize`` puts the originals back)."""
    x = w.detach().float().movedim(dim, 0)  # [C, I]
    xg = _grouped(x, group_size)  # [C, G, g]
    src = xg if keep is None else xg.masked_fill(_grouped(keep.movedim(dim, 0).float(), group_size).bool(), 0)
    q = qmax(bits)
    scale = src.abs().amax(-1, keepdim=True) / q  # [C, G, 1]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(xg / scale), -q, q).to(torch.int8)  # [C, G, g]
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, like: torch.Tensor, dim: int = 0,
               keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """codes [C, G, g] * scales [C, G, 1] -> a tensor shaped and typed like ``like`` (the original weight);
    ``keep``: those values are ``like``'s own."""
    C = codes.shape[0]
    x = (codes.float() * scale).view(C, -1)[:, :like.movedim(dim, 0).shape[1]]  # [C, I]
    out = x.movedim(0, dim).to(like.dtype)
    return out if keep is None else torch.where(keep, like.detach(), out)


def rtn(w: torch.Tensor, bits: int, group_size: Optional[int] = None, dim: int = 0,
        keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The RTN round trip of one weight (a new tensor like ``w``)."""
    codes, scale = rtn_codes(w, bits, group_size, dim, keep)
    return dequantize(codes, scale, w, dim, keep)


@contextlib.contextmanager
def quantized(model: nn.Module, bits: int, group_size: Optional[int] = None, protect=None):
    """Inside the block, every decoder-block Linear weight is its ``bits``-bit RTN round trip; values True in
    ``protect`` (a ProtectList or {parameter name: bool tensor}) keep full precision. Yields the number of
    protected values kept. Weights restored bit-exact on exit, also on exceptions and KeyboardInterrupt."""
    bits, group_size = check_bits(bits), check_group_size(group_size)
    weights = block_weights(model)
    masks = getattr(protect, "masks", protect) or {}
    kept = 0
    with WeightEdits() as edits:
        for bw in weights:
            keep = masks.get(bw.name)
            kept += 0 if keep is None else int(keep.sum())
            edits.set_(bw.weight, rtn(bw.weight, bits, group_size, bw.dim, keep))
        yield kept
