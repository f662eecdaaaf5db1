"""The weights that compression touches, and in-place edits of them with a bit-exact restore.

``block_weights``: every Linear-like weight (nn.Linear [out, in], GPT-2 Conv1D [in, out]) inside the decoder blocks,
with the dimension that indexes its output channels. Embeddings, the LM head, norms and fused MoE expert tensors
are never quantised or pruned.

``WeightEdits``: saves a tensor's original the first time it is edited and copies every original back on
``restore()`` / on leaving the ``with`` block (also on an exception or KeyboardInterrupt), as ``masked`` does.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import torch
from torch import nn

from ...models.registry import linear_targets


@dataclasses.dataclass(frozen=True, eq=False)
class BlockWeight:
    name: str  # parameter name, e.g. "model.layers.2.mlp.down_proj.weight"
    module: nn.Module  # the Linear / Conv1D holding it
    weight: torch.Tensor  # the parameter, [out, in] (dim 0) or [in, out] (dim 1)
    dim: int  # dimension indexing output channels
    layer: int


def block_weights(model: nn.Module) -> List[BlockWeight]:
    """Every Linear / Conv1D weight of the decoder blocks (module order); resident weights only."""
    out = []
    for t in linear_targets(model):
        if t.layer is None or t.weight_dim is None:  # outside the blocks, or a tied LM head (hook layout)
            continue
        w = t.module.weight
        if w.device.type == "meta":
            raise ValueError(f"{t.name}.weight is offloaded (meta): compression needs every block weight in memory")
        out.append(BlockWeight(f"{t.name}.weight", t.module, w, t.weight_dim, t.layer))
    if not out:
        raise ValueError("no Linear weight inside the decoder blocks of this model")
    return out


class WeightEdits:
    """Originals of the tensors edited in place; ``restore()`` copies them back bit-exact."""

    def __init__(self):
        self._saved: Dict[int, tuple] = {}  # id(tensor) -> (tensor, original copy)

    def save(self, w: torch.Tensor) -> torch.Tensor:
        """Remember ``w``'s current values (first call per tensor only); returns ``w.data`` to edit."""
        if id(w) not in self._saved:
            self._saved[id(w)] = (w, w.detach().clone())
        return w.data

    def set_(self, w: torch.Tensor, value: torch.Tensor) -> None:
        """Save ``w`` and overwrite it with ``value`` (same shape), in place."""
        with torch.no_grad():
            self.save(w).copy_(value)

    def restore(self) -> None:
        with torch.no_grad():
            while self._saved:
                _, (w, orig) = self._saved.popitem()
                w.data.copy_(orig)

    def __enter__(self) -> "WeightEdits":
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False
