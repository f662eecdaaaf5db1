"""Scannable modules ("targets") and how to read, mask and restore their output channels.

A Target is one module output whose channels are scored in Stage 1 and masked in Stage 2. The layout says
how an output channel maps to parameters, so masking can be done in place on the weights:

- ``linear``: nn.Linear-like, weight [out, in] -> zero weight row c (and bias[c]).
- ``conv1d``: GPT-2 Conv1D, weight [in, out] -> zero weight column c (and bias[c]).
- ``hook``: no parameter layout to exploit (e.g. Gemma's (1 + w) RMSNorm): the output channel is zeroed by a
  forward hook.
- ``expert``: one expert of a fused MoE experts module (see ``moe.py``): ``params`` gives the expert's slice of
  the fused weight for in-place masking, and ``attach`` hooks the expert's own output, which is not a module
  output.
- ``producer``: a module without weights whose output channel c is zero exactly when channel c of its input is
  (an MLP activation f with f(0) = 0, an eval-mode dropout): masked in place by zeroing channel c of the module
  that produces that input (``params``: its weight rows or Conv1D columns and bias), by a hook in batched masks.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import torch
from torch import nn

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
    # Optional: hook -> removable handle. Registers ``hook(module, args, raw)`` to see this target's output when
    # it is not ``module``'s own output (default: ``module.register_forward_hook``).
    attach: Optional[Callable] = None
    # Optional: () -> (weight, bias or None, channel dim) to mask in place when the channels are not rows/columns
    # of ``module.weight`` (e.g. expert e's slice [H, I] of a fused [E, H, I] parameter).
    params: Optional[Callable[[], Tuple[torch.Tensor, Optional[torch.Tensor], int]]] = None
    # Optional, ``hook`` layout: writing this value into ``module.weight[c]`` zeroes output channel c exactly (e.g.
    # -1 for Gemma's RMSNorm x * (1 + w)); lets a masked checkpoint be saved with the channel zeroed in the weights.
    export_fill: Optional[float] = None

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

    def register_forward_hook(self, hook):
        """Call ``hook(module, args, raw)`` after every forward that produces this target's output."""
        if self.attach is not None:
            return self.attach(hook)
        return self.module.register_forward_hook(hook)

    def mask_params(self):
        """(weight, bias or None, channel dim) to mask in place, or None when only hook masking applies."""
        if self.params is not None:
            return self.params()
        dim = self.weight_dim
        w = getattr(self.module, "weight", None)
        if dim is None or not isinstance(w, torch.Tensor):
            return None
        b = getattr(self.module, "bias", None)
        return w, b if isinstance(b, torch.Tensor) else None, dim

    @property
    def weight_dim(self) -> Optional[int]:
        """Dimension of ``module.weight`` indexed by output channel, or None for hook masking."""
        return {"linear": 0, "conv1d": 1}.get(self.layout)

    @property
    def device(self) -> torch.device:
        """Device of the module's (first non-meta) parameters (a module without any: that of ``params``' weight);
        cpu when all are offloaded to meta."""
        for recurse in (False, True):
            for p in self.module.parameters(recurse=recurse):
                if p.device.type != "meta":
                    return p.device
        if self.params is not None and self.params()[0].device.type != "meta":
            return self.params()[0].device
        return torch.device("cpu")
