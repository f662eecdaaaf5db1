"""Fused MoE experts (transformers >= 5): one Target per expert's down projection.

transformers 5 keeps all experts of a sparse MoE block in one module with fused parameters, e.g. Mixtral /
Qwen2-MoE / Qwen3-MoE ``experts.gate_up_proj`` [E, 2I, H] and ``experts.down_proj`` [E, H, I] ([E, I, H] when
the module says ``is_transposed``), called as ``experts(hidden [N, H], top_k_index [N, k], top_k_weights [N, k])
-> [N, H]`` with N = B*T flattened tokens. No module outputs one expert's result, so expert e of the experts
module at ``P`` is a virtual target named ``P.<e>.down_proj`` (the name transformers 4 gave the module):

- Output (Stage 1): expert e's routing-weighted contribution to the block output, a dense [N, H] tensor that is
  zero at tokens not routed to e -- what expert e writes into the residual stream. It is computed by calling the
  experts module's own forward on the tokens routed to e with top_k = 1 (so any experts implementation works),
  once per forward for all experts of the module, and only while one of its targets has a hook attached.
- In-place masking (WeightMask): channel c of expert e zeroes row c of ``down_proj[e]`` (and
  ``down_proj_bias[e, c]``), so the expert writes an exact 0 there; restore is bit-exact.
- Hook masking (BatchedMask, offloaded weights): block output minus the masked part of expert e's
  contribution (equal to in-place masking up to float rounding of the sum).
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .targets import Target

EXPERT_KIND = "moe.expert.down_proj"


def is_fused_experts(module: nn.Module) -> bool:
    """A module holding all experts' down projections as one 3-D parameter [E, H, I] (or [E, I, H])."""
    w = getattr(module, "down_proj", None)
    return isinstance(w, nn.Parameter) and w.dim() == 3 and not isinstance(module, nn.Linear)


class _ExpertOutput:
    """Raw output seen by one expert target's hook: the block output and expert e's contribution."""

    __slots__ = ("out", "contrib")

    def __init__(self, out: torch.Tensor, contrib: torch.Tensor):
        self.out = out  # [N, H] experts module output (after earlier hooks)
        self.contrib = contrib  # [N, H] expert e's weighted contribution


def _select(raw: _ExpertOutput) -> torch.Tensor:
    return raw.contrib


def _replace(raw: _ExpertOutput, new: torch.Tensor) -> torch.Tensor:
    """Block output with expert e's contribution replaced by ``new`` [N, H]."""
    return raw.out - (raw.contrib - new)


def _experts_args(args: tuple, kwargs: dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vals = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index", "top_k_weights") if k in kwargs]
    if len(vals) < 3:
        raise RuntimeError("fused experts module called without (hidden_states, top_k_index, top_k_weights)")
    return vals[0], vals[1], vals[2]


class _ExpertsTap:
    """Per experts module: splits each forward into per-expert contributions while hooks are attached."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.users = 0
        self._pre = None
        self._parts: Optional[Dict[int, Tuple[torch.Tensor, torch.Tensor]]] = None  # e -> (tokens [n], y [n, H])

    def attach(self, e: int, hook):
        def wrapped(module, args, kwargs, out):
            return hook(module, args, _ExpertOutput(out, self.contribution(e, args, kwargs, out)))

        if self.users == 0:
            self._pre = self.module.register_forward_pre_hook(self._reset)
        self.users += 1
        return _TapHandle(self, self.module.register_forward_hook(wrapped, with_kwargs=True))

    def detach(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._pre.remove()
            self._pre = None
            self._parts = None

    def _reset(self, module, args):
        self._parts = None

    def _split(self, hidden: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor):
        """hidden [N, H], top_idx [N, k], top_w [N, k] -> {e: (tokens [n_e], weighted output [n_e, H])}."""
        num = self.module.down_proj.shape[0]
        parts = {}
        for e in torch.unique(top_idx).tolist():
            if not 0 <= e < num:  # expert-parallel sentinel / padding
                continue
            tok, slot = (top_idx == e).nonzero(as_tuple=True)  # [n_e], [n_e]
            y = self.module.forward(hidden[tok], top_idx.new_full((tok.numel(), 1), e),
                                    top_w[tok, slot].unsqueeze(1))  # [n_e, H], bypasses our hooks
            parts[e] = (tok, y)
        return parts

    def contribution(self, e: int, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
        """Expert e's weighted contribution [N, H] to this forward's output (zeros at tokens not routed to e)."""
        if self._parts is None:
            self._parts = self._split(*_experts_args(args, kwargs))
        dense = torch.zeros(out.shape, dtype=out.dtype, device=out.device)  # [N, H]
        part = self._parts.get(e)
        if part is not None:
            tok, y = part
            dense.index_copy_(0, tok.to(out.device), y.to(device=out.device, dtype=out.dtype))
        return dense


class _TapHandle:
    def __init__(self, tap: _ExpertsTap, handle):
        self.tap, self.handle = tap, handle

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
            self.tap.detach()


_TAPS: "weakref.WeakKeyDictionary[nn.Module, _ExpertsTap]" = weakref.WeakKeyDictionary()


def _tap(module: nn.Module) -> _ExpertsTap:
    tap = _TAPS.get(module)
    if tap is None:
        tap = _TAPS[module] = _ExpertsTap(module)
    return tap


def _expert_params(module: nn.Module, e: int):
    """(weight view [H, I] or [I, H], bias view [H] or None, channel dim) of expert e's down projection."""
    transposed = bool(getattr(module, "is_transposed", False))
    b = getattr(module, "down_proj_bias", None) if getattr(module, "has_bias", True) else None
    return module.down_proj.data[e], (b.data[e] if isinstance(b, torch.Tensor) else None), 1 if transposed else 0


def expert_targets(name: str, module: nn.Module, layer: Optional[int]) -> List[Target]:
    """One Target per expert of the fused experts module ``module`` (at path ``name``)."""
    w = module.down_proj  # [E, H, I] or [E, I, H]
    channels = int(w.shape[2] if getattr(module, "is_transposed", False) else w.shape[1])
    tap = _tap(module)
    out = []
    for e in range(int(w.shape[0])):
        out.append(Target(
            name=f"{name}.{e}.down_proj", module=module, layer=layer, kind=EXPERT_KIND, num_channels=channels,
            layout="expert", select=_select, replace=_replace,
            attach=lambda hook, e=e: tap.attach(e, hook),
            params=lambda e=e: _expert_params(module, e)))
    return out
