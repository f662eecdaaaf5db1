"""Channel masking with exact restore.

- ``WeightMask``: zero output channels in place on the weights (rows of nn.Linear, columns of Conv1D), keep
  the originals, and copy them back bit-exact on ``restore()``. Targets without a weight layout are masked by
  a forward hook instead.
- ``BatchedMask``: a different channel mask for every batch element of one forward (Stage 2 evaluates several
  prefix sizes of the ranking in one batched pass). Implemented with forward hooks; weights are untouched.
- ``masked(model, neurons)``: the user-facing context manager.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from . import ops
from .devices import offloaded
from .neurons import Neuron, NeuronIndex
from .registry import discover_targets
from .targets import Target


def _group(neurons: Iterable[Neuron]) -> Dict[str, List[int]]:
    groups: Dict[str, List[int]] = defaultdict(list)
    for n in neurons:
        if n.channel not in groups[n.module]:
            groups[n.module].append(n.channel)
    return groups


class WeightMask:
    """In-place channel masking of targets; ``restore()`` puts every original value back bit-exact."""

    def __init__(self, targets: Sequence[Target]):
        self._targets = {t.name: t for t in targets}
        self._saved: list = []  # (weight, bias, dim, channels, saved_w, saved_b)
        self._hooks: list = []

    def apply(self, neurons: Iterable[Neuron]) -> "WeightMask":
        try:
            for module_name, channels in _group(neurons).items():
                t = self._targets[module_name]
                params = t.mask_params()
                if params is None or offloaded(t.module, params[0]):  # not resident: mask by hook
                    self._hooks.append(_zero_hook(t, channels))
                    continue
                w, b, dim = params
                idx = torch.tensor(channels, dtype=torch.long, device=w.device)
                with torch.no_grad():
                    saved_w, saved_b = ops.mask_channels_(w.data, None if b is None else b.data, idx, dim)
                self._saved.append((w, b, dim, idx, saved_w, saved_b))
        except BaseException:
            self.restore()
            raise
        return self

    def restore(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        while self._saved:
            w, b, dim, idx, saved_w, saved_b = self._saved.pop()
            with torch.no_grad():
                ops.restore_channels_(w.data, None if b is None else b.data, idx, saved_w, saved_b, dim)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def _zero_hook(t: Target, channels: List[int]):
    idx_cache = {}

    def hook(module, args, out):
        y = t.output(out)
        idx = idx_cache.get(y.device)
        if idx is None:
            idx = idx_cache[y.device] = torch.tensor(channels, dtype=torch.long, device=y.device)
        return t.with_output(out, y.index_fill(-1, idx, 0))

    return t.register_forward_hook(hook)


class BatchedMask:
    """Per-batch-element channel masks for one batched forward: element b keeps channels where keep[b] == 1."""

    def __init__(self, targets: Sequence[Target]):
        self._targets = {t.name: t for t in targets}
        self._keep: Dict[str, torch.Tensor] = {}
        self._hooks = []

    def set(self, masks_per_element: Sequence[Sequence[Neuron]]) -> None:
        """masks_per_element[b] = neurons to zero in batch element b."""
        self.clear()
        B = len(masks_per_element)
        keep: Dict[str, torch.Tensor] = {}
        for b, neurons in enumerate(masks_per_element):
            for module_name, channels in _group(neurons).items():
                t = self._targets[module_name]
                if module_name not in keep:
                    keep[module_name] = torch.ones(B, t.num_channels, dtype=torch.float32)
                keep[module_name][b, channels] = 0.0
        for name, k in keep.items():
            t = self._targets[name]
            k = k.to(t.device)
            self._keep[name] = k
            self._hooks.append(t.register_forward_hook(self._make_hook(t, k)))

    @staticmethod
    def _make_hook(t: Target, keep: torch.Tensor):
        def hook(module, args, out):
            y = t.output(out)
            k = keep if keep.device == y.device else keep.to(y.device)
            if y.dim() == 3 and y.shape[0] == k.shape[0]:
                return t.with_output(out, ops.batched_channel_mask(y, k))
            # flattened tokens (e.g. MoE experts): [B*T, C] with B leading
            shape = y.shape
            y3 = y.reshape(k.shape[0], -1, shape[-1])
            return t.with_output(out, ops.batched_channel_mask(y3, k).reshape(shape))

        return hook

    def clear(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._keep.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.clear()
        return False


def maskable_targets(model: nn.Module, allow_discovery: bool = False) -> List[Target]:
    """Every target a neuron name may refer to (scope='all' plus the down projections)."""
    seen, out = set(), []
    for scope in ("down_proj", "all"):
        for t in discover_targets(model, scope, allow_discovery=allow_discovery):
            if t.name not in seen:
                seen.add(t.name)
                out.append(t)
    return out


@contextlib.contextmanager
def masked(model: nn.Module, neurons: Iterable, targets: Optional[Sequence[Target]] = None,
           discover: bool = False):
    """Zero the given neurons (names like ``model.layers.2.mlp.down_proj:62`` or Neuron objects) inside the block.

    Weights are restored bit-exact on exit, also on exceptions and KeyboardInterrupt. Unknown names raise
    KeyError before anything is changed. discover: allow guessed targets for unregistered model types.
    """
    targets = list(targets) if targets is not None else maskable_targets(model, allow_discovery=discover)
    resolved = NeuronIndex(targets).resolve(neurons)
    wm = WeightMask(targets)
    try:
        wm.apply(resolved)
        yield resolved
    finally:
        wm.restore()
