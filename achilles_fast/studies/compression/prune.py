"""Unstructured pruning of the decoder-block Linear weights: magnitude (|W|, the lowest of each weight tensor
zeroed) and Wanda (|W_cj| * ||X_j||_2 with the input-activation norms of the scoring text, the lowest of each output
channel zeroed, as in Sun et al. 2023). Protected values are never pruned; a comparison group (tensor or channel)
prunes floor(sparsity * size) values, or all its unprotected ones when fewer."""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch
from torch import nn

from .params import check_method, check_sparsity
from .weights import WeightEdits, block_weights


def prune_mask(w: torch.Tensor, sparsity: float, method: str, dim: int = 0, norm: Optional[torch.Tensor] = None,
               keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool tensor like ``w`` (output channels along ``dim``): True on the values to zero. norm [in]: Wanda's input
    norms; keep (bool like w): never pruned. Ties: the lower flat index is pruned first."""
    sparsity, method = check_sparsity(sparsity), check_method(method)
    x = w.detach().float().abs().movedim(dim, 0)  # [C, I]
    if method == "wanda":
        if norm is None:
            raise ValueError("Wanda pruning needs the input-activation norms")
        x = x * norm.to(x.device, torch.float32)[None, :]
    groups = x.reshape(1, -1) if method == "magnitude" else x  # [R, n]: one group (the tensor) or one per channel
    prot = torch.zeros_like(groups, dtype=torch.bool) if keep is None else keep.movedim(dim, 0).reshape(groups.shape)
    k = int(sparsity * groups.shape[1])  # per group
    k_g = torch.clamp((~prot).sum(1), max=k)  # [R]
    score = groups.masked_fill(prot, float("inf"))
    order = torch.argsort(score, dim=1, stable=True)  # [R, n]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(groups.shape[1]).expand_as(order).contiguous())
    pruned = rank < k_g[:, None]  # [R, n]
    return pruned.reshape(x.shape).movedim(0, dim)


@contextlib.contextmanager
def pruned(model: nn.Module, sparsity: float, method: str = "magnitude", protect=None,
           norms: Optional[Dict[str, torch.Tensor]] = None):
    """Inside the block, every decoder-block Linear weight is pruned to ``sparsity`` by ``method``; values True in
    ``protect`` are kept. norms: {weight name: [in]} (``input_norms``), needed by Wanda. Yields the fraction of
    block weights zeroed. Weights restored bit-exact on exit, also on exceptions and KeyboardInterrupt."""
    sparsity, method = check_sparsity(sparsity), check_method(method)
    weights = block_weights(model)
    masks = getattr(protect, "masks", protect) or {}
    zeroed = total = 0
    with WeightEdits() as edits:
        for bw in weights:
            m = prune_mask(bw.weight, sparsity, method, bw.dim, None if norms is None else norms.get(bw.name),
                           masks.get(bw.name))
            zeroed, total = zeroed + int(m.sum()), total + m.numel()
            edits.set_(bw.weight, bw.weight.detach().masked_fill(m, 0))
        yield zeroed / total
