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

transformers 4 keeps the experts as a ModuleList of MLPs called inside the sparse MoE block (Mixtral
``block_sparse_moe``, Qwen2-MoE / Qwen3-MoE ``mlp``). Expert e's target is then its real down projection
module (``...experts.<e>.w2`` / ``...experts.<e>.down_proj``), masked in place like any Linear; its output is
the same weighted contribution, assembled from the expert's own output rows and the routing recomputed from the
router logits with the rule these blocks share (softmax, top-k, renormalised unless ``norm_topk_prob`` is
False), and hooked on the block so it is defined (zeros) even when no token was routed to e.
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
        self.contrib = contrib  # [N, H] expert e's weighted contribution, N = B*T


def _select(raw: _ExpertOutput) -> torch.Tensor:
    return raw.contrib


def _replace(raw: _ExpertOutput, new: torch.Tensor):
    """Block output (tensor [N, H] / [B, T, H], or a tuple led by one) with expert e's contribution replaced."""
    out = raw.out
    y = out[0] if isinstance(out, tuple) else out
    y = y - (raw.contrib - new).view_as(y)
    return (y,) + tuple(out[1:]) if isinstance(out, tuple) else y


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


# ---- transformers 4: ModuleList experts inside the sparse MoE block ---------------------------------------------
def is_modulelist_moe(block: nn.Module) -> bool:
    """A transformers-4 sparse MoE block: Linear router ``gate``, ModuleList ``experts``, ``top_k``."""
    return (isinstance(getattr(block, "experts", None), nn.ModuleList) and isinstance(getattr(block, "gate", None),
            nn.Linear) and hasattr(block, "top_k"))


def _down_of(expert: nn.Module) -> Tuple[str, nn.Linear]:
    """(attribute name, module) of an expert MLP's down projection."""
    for attr in ("down_proj", "w2", "fc2", "c_proj"):
        m = getattr(expert, attr, None)
        if isinstance(m, nn.Linear):
            return attr, m
    raise ValueError(f"cannot find the down projection of expert module {type(expert).__name__}")


class _LegacyTap:
    """Per transformers-4 MoE block: records routing and each expert's output rows while hooks are attached."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.users = 0
        self._handles: list = []
        self._route = None  # (top-k experts [N, k], weights [N, k])
        self._rows: Dict[int, torch.Tensor] = {}  # e -> expert output [n_e, H] (unweighted, block's row order)

    def attach(self, e: int, hook):
        def wrapped(module, args, out):
            return hook(module, args, _ExpertOutput(out, self.contribution(e, out)))

        if self.users == 0:
            self._handles = [self.block.register_forward_pre_hook(self._reset),
                             self.block.gate.register_forward_hook(self._on_gate)]
            for i, ex in enumerate(self.block.experts):
                self._handles.append(ex.register_forward_hook(
                    lambda m, a, out, i=i: self._rows.__setitem__(i, out[0] if isinstance(out, tuple) else out)))
        self.users += 1
        return _TapHandle(self, self.block.register_forward_hook(wrapped))

    def detach(self) -> None:
        self.users -= 1
        if self.users == 0:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._reset(None, None)

    def _reset(self, module, args):
        self._route, self._rows = None, {}

    def _on_gate(self, module, args, logits):
        """Routing of these blocks: softmax over experts, top-k, renormalised unless norm_topk_prob is False."""
        probs = torch.softmax(logits.float(), dim=-1)  # [N, E]
        w, sel = torch.topk(probs, int(self.block.top_k), dim=-1)  # [N, k]
        if getattr(self.block, "norm_topk_prob", True):
            w = w / w.sum(dim=-1, keepdim=True)
        self._route = (sel, w)

    def contribution(self, e: int, out) -> torch.Tensor:
        y = out[0] if isinstance(out, tuple) else out
        dense = torch.zeros(y.reshape(-1, y.shape[-1]).shape, dtype=y.dtype, device=y.device)  # [N, H]
        rows = self._rows.get(e)
        if rows is None:
            return dense
        sel, w = self._route
        slot, tok = (sel == e).t().nonzero(as_tuple=True)  # the block's row order: top-k slot, then token
        if tok.numel() != rows.shape[0]:
            raise RuntimeError(f"expert {e}: {rows.shape[0]} rows but the recomputed routing gives {tok.numel()} "
                               "tokens; this MoE block routes differently from softmax-top-k")
        part = rows * w[tok, slot, None].to(rows.dtype)  # [n_e, H], as the block weights it
        return dense.index_copy_(0, tok.to(y.device), part.to(device=y.device, dtype=y.dtype))


_LEGACY_TAPS: "weakref.WeakKeyDictionary[nn.Module, _LegacyTap]" = weakref.WeakKeyDictionary()


def legacy_expert_targets(name: str, block: nn.Module, layer: Optional[int]) -> List[Target]:
    """One Target per expert of a transformers-4 sparse MoE block at path ``name``."""
    tap = _LEGACY_TAPS.get(block)
    if tap is None:
        tap = _LEGACY_TAPS[block] = _LegacyTap(block)
    out = []
    for e, expert in enumerate(block.experts):
        attr, down = _down_of(expert)
        out.append(Target(
            name=f"{name}.experts.{e}.{attr}", module=down, layer=layer, kind=EXPERT_KIND,
            num_channels=int(down.out_features), layout="expert", select=_select, replace=_replace,
            attach=lambda hook, e=e: tap.attach(e, hook),
            params=lambda down=down: (down.weight, down.bias, 0)))
    return out
