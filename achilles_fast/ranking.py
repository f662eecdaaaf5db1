"""Ranking: scores of all targets -> an ordered list of distinct channels (flat ids), fully vectorised.

Modes
- ``per_token`` (paper): every (module, position, channel) entry is ranked on its own; a channel enters the
  list at its first (highest) entry and later duplicates collapse. Ties are broken by flat entry order
  (module scan order, then position, then channel), the order a stable descending sort gives.
- ``max`` / ``mean``: one score per channel (max or mean over positions), ranked descending, ties by flat
  channel order.

Note that ``per_token`` and ``max`` give the same order up to ties (a channel's first entry is its maximum);
both are kept because ``per_token`` is the paper's literal procedure.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

RANKINGS = ("per_token", "max", "mean")


def _stable_topk(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a 1-D tensor, descending, ties broken by lower index first. -> (values [k], indices [k])."""
    k = min(k, scores.numel())
    vals, idx = torch.topk(scores, k, sorted=True)
    if k < scores.numel():
        # include every entry tied with the k-th value so the tie-break below sees all of them
        kth = vals[-1]
        tied = (scores == kth).nonzero().flatten()
        idx = torch.cat([idx[vals > kth], tied])
        vals = scores[idx]
    # sort by (-value, index): index first, then a stable sort on value
    order = torch.argsort(idx)
    idx, vals = idx[order], vals[order]
    order = torch.sort(vals, descending=True, stable=True).indices
    return vals[order][:k], idx[order][:k]


def rank_channels(scores: Sequence[torch.Tensor], ranking: str = "per_token", top: int = 1000
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """scores[m]: [T, C_m] (or [C_m] for pre-reduced scores). -> (flat channel ids [n], channel scores [n]), n <= top.

    Flat channel id = offset of target m + channel, targets in scan order.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}: expected one of {', '.join(RANKINGS)}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    dev = scores[0].device
    sizes = torch.tensor([s.shape[-1] for s in scores], device=dev)
    ch_offsets = torch.cumsum(sizes, 0) - sizes  # [M]
    total_channels = int(sizes.sum())
    if ranking != "per_token" or scores[0].dim() == 1:
        if scores[0].dim() == 1:
            per_ch = torch.cat([s.to(dev) for s in scores])
        elif ranking == "mean":
            per_ch = torch.cat([s.to(dev).mean(0) for s in scores])
        else:
            per_ch = torch.cat([s.to(dev).amax(0) for s in scores])
        vals, ids = _stable_topk(per_ch, top)
        return ids, vals
    # per_token: flat entries of all modules
    T = scores[0].shape[0]
    flat = torch.cat([s.to(dev).reshape(-1) for s in scores])  # [sum_m T*C_m]
    ent_sizes = sizes * T
    ent_offsets = torch.cumsum(ent_sizes, 0) - ent_sizes
    want = min(top, total_channels)
    k = min(flat.numel(), max(4 * want, 64))
    while True:
        vals, idx = _stable_topk(flat, k)
        m = torch.searchsorted(ent_offsets, idx, right=True) - 1  # module of each entry
        ch = ch_offsets[m] + (idx - ent_offsets[m]) % sizes[m]  # flat channel id
        uniq, inv = torch.unique(ch, return_inverse=True)
        pos = torch.arange(ch.numel(), device=dev)
        first = torch.full((uniq.numel(),), ch.numel(), dtype=torch.long, device=dev).scatter_reduce(
            0, inv, pos, reduce="amin")
        if uniq.numel() >= want or k >= flat.numel():
            first = first.sort().values[:want]
            return ch[first], vals[first]
        k = min(flat.numel(), 4 * k)
