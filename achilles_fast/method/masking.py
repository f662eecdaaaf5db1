"""Channel masking with exact restore, driven by a Ranking's rank tensors.

- ``WeightMask``: zero the first n ranked channels in place on the weights (rows of nn.Linear, columns of Conv1D,
  an expert's slice of fused MoE weights), keep the originals, and copy them back bit-exact on ``restore()``.
  Targets without a weight layout (or with offloaded weights) are masked by a forward hook instead.
- ``BatchedMask``: a different prefix size n_b for every batch element b of one forward (Stage 2 evaluates several
  prefix sizes in one batched pass): element b of target m keeps channel c iff ``rank_m[c] >= n_b``. Forward
  hooks; weights untouched.
- ``masked(model, neurons)``: the user-facing context manager.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..models.devices import offloaded
from ..models.registry import maskable_targets
from ..models.targets import Target
from .ranking import Ranking


class WeightMask:
    """In-place masking of a ranking's first n channels; ``restore()`` puts every original value back bit-exact."""

    def __init__(self, ranking: Ranking):
        self.ranking = ranking
        self._saved: list = []  # (weight, bias, dim, channels, saved_w, saved_b)
        self._hooks: list = []

    def apply(self, n: Optional[int] = None) -> "WeightMask":
        """Mask the first ``n`` ranked channels (default: all of them)."""
        n = len(self.ranking) if n is None else n
        try:
            for t, rank in zip(self.ranking.targets, self.ranking.rank_tensors()):
                channels = (rank < n).nonzero().flatten()  # [m] ascending
                if channels.numel() == 0:
                    continue
                params = t.mask_params()
                if params is None or offloaded(t.module, params[0]):  # not resident: mask by hook
                    self._hooks.append(_zero_hook(t, channels))
                    continue
                w, b, dim = params
                idx = channels.to(w.device)
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


def _zero_hook(t: Target, channels: torch.Tensor):
    idx_cache: Dict[torch.device, torch.Tensor] = {}

    def hook(module, args, out):
        y = t.output(out)
        idx = idx_cache.get(y.device)
        if idx is None:
            idx = idx_cache[y.device] = channels.to(y.device)
        return t.with_output(out, y.index_fill(-1, idx, 0))

    return t.register_forward_hook(hook)


class BatchedMask:
    """Per-batch-element prefix masks of a Ranking for one batched forward (hooks on the ranked targets)."""

    def __init__(self, ranking: Ranking, max_n: Optional[int] = None):
        self.ranking = ranking
        ranks = ranking.rank_tensors()
        limit = len(ranking) if max_n is None else max_n
        # only targets holding a channel that some prefix up to ``limit`` masks: (target, rank [C], best rank)
        firsts = [int(r.min()) if r.numel() else len(ranking) for r in ranks]
        self._live = [(t, r, f) for t, r, f in zip(ranking.targets, ranks, firsts) if f < limit]
        self._keep: List[Optional[torch.Tensor]] = [None] * len(self._live)
        self._hooks: list = []

    def __enter__(self):
        for i, (t, _, _) in enumerate(self._live):
            self._hooks.append(t.register_forward_hook(self._make_hook(t, i)))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.clear()
        return False

    def set_prefixes(self, ns: Sequence[int]) -> None:
        """Batch element b masks the first ``ns[b]`` ranked channels (0: none)."""
        self.clear()
        ns = [int(n) for n in ns]
        on_dev: Dict[torch.device, torch.Tensor] = {}
        for i, (t, rank, first) in enumerate(self._live):
            if first >= max(ns):
                continue
            n = on_dev.get(rank.device)
            if n is None:
                n = on_dev[rank.device] = torch.tensor(ns, dtype=torch.long, device=rank.device)  # [B]
            self._keep[i] = (rank[None] >= n[:, None]).to(torch.float32)  # [B, C] 1 keep / 0 mask

    def clear(self) -> None:
        self._keep = [None] * len(self._live)

    def _make_hook(self, t: Target, i: int):
        def hook(module, args, out):
            keep = self._keep[i]
            if keep is None:
                return None
            y = t.output(out)
            k = keep if keep.device == y.device else keep.to(y.device)
            if y.dim() == 3 and y.shape[0] == k.shape[0]:
                return t.with_output(out, ops.batched_channel_mask(y, k))
            # flattened tokens (e.g. MoE experts): [B*T, C] with B leading
            shape = y.shape
            y3 = y.reshape(k.shape[0], -1, shape[-1])
            return t.with_output(out, ops.batched_channel_mask(y3, k).reshape(shape))

        return hook


@contextlib.contextmanager
def masked(model: nn.Module, neurons: Iterable, targets: Optional[Sequence[Target]] = None,
           discover: bool = False):
    """Zero the given neurons (names like ``model.layers.2.mlp.down_proj:62`` or Neuron objects) inside the block;
    yields the resolved (distinct) Neurons.

    Weights are restored bit-exact on exit, also on exceptions and KeyboardInterrupt. Unknown names raise
    KeyError before anything is changed. discover: allow guessed targets for unregistered model types.
    """
    targets = list(targets) if targets is not None else maskable_targets(model, allow_discovery=discover)
    ranking = Ranking.from_neurons(targets, neurons)
    wm = WeightMask(ranking)
    try:
        wm.apply()
        yield ranking.neurons()
    finally:
        wm.restore()
