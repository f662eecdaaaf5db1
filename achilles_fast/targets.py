"""Scannable modules ("targets") and how to read, mask and restore their output channels.

A Target is one module output whose channels are scored in Stage 1 and masked in Stage 2. The layout says
how an output channel maps to parameters, so masking can be done in place on the weights:

- ``linear``: nn.Linear-like, weight [out, in] -> zero weight row c (and bias[c]).
- ``conv1d``: GPT-2 Conv1D, weight [in, out] -> zero weight column c (and bias[c]).
- ``hook``: no parameter layout to exploit (e.g. Gemma's (1 + w) RMSNorm, fused MoE experts): the output
  channel is zeroed by a forward hook.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
from torch import nn

LAYOUTS = ("linear", "conv1d", "hook")


@dataclasses.dataclass(eq=False)
class Target:
    name: str  # HF module path, e.g. "model.layers.2.mlp.down_proj"
    module: nn.Module
    layer: Optional[int]  # decoder layer index, None outside the layer stack
    kind: str  # component kind, e.g. "mlp.down_proj", "attn.o_proj", "norm.input"
    num_channels: int
    layout: str = "linear"
    # Optional: map the raw module output to a [..., C] tensor (e.g. take [0] of a tuple).
    select: Optional[Callable] = None
    # Optional: write a modified [..., C] tensor back into the raw output structure.
    replace: Optional[Callable] = None

    def output(self, raw) -> torch.Tensor:
        """Raw module output -> tensor [..., C]."""
        if self.select is not None:
            return self.select(raw)
        return raw[0] if isinstance(raw, tuple) else raw

    def with_output(self, raw, new: torch.Tensor):
        """Return ``raw`` with its channel tensor replaced by ``new``."""
        if self.replace is not None:
            return self.replace(raw, new)
        if isinstance(raw, tuple):
            return (new,) + tuple(raw[1:])
        return new

    @property
    def weight_dim(self) -> Optional[int]:
        """Dimension of ``module.weight`` indexed by output channel, or None for hook masking."""
        return {"linear": 0, "conv1d": 1}.get(self.layout)

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters(recurse=False):
            return p.device
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")
