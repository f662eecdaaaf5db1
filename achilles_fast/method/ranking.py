"""Rankings: scores of all targets -> an ordered list of distinct channels.

A ranker (``method.rankers``: the sensitivity method of Stage 1, or a baseline) maps (model, targets, ids) to a
``Ranking``: flat channel ids best first, their scores, and per target a rank tensor (position of each channel in
the ranking), which is all Stage 2 needs: the prefix of size n masks ``rank < n``.

Modes
- ``per_token`` (paper): every (module, position, channel) entry is ranked on its own; a channel enters the
  list at its first (highest) entry and later duplicates collapse. Ties are broken by flat entry order
  (module scan order, then position, then channel), the order a stable descending sort gives.
- ``max`` / ``mean``: one score per channel (max or mean over positions), ranked descending, ties by flat
  channel order.

Note that ``per_token`` and ``max`` give the same order up to ties (a channel's first entry is its maximum);
both are kept because ``per_token`` is the paper's literal procedure.

``PositionMax`` (a channel's maximum over positions and the first position holding it) is all that either
needs, so Stage 1 can drop a target's [T, C] scores as soon as they are final: ``rank_channels`` gives the same
order from [T, C] scores and from their ``PositionMax``, ties included.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from ..models.neurons import Neuron, NeuronIndex
from ..models.targets import Target

RANKINGS = ("per_token", "max", "mean")  # how Stage 1 scores of positions become one order (FindConfig.ranking)


@dataclasses.dataclass
class PositionMax:
    """Per-channel reduction of [T, C] scores that keeps the per_token order: values [C], first argmax pos [C]."""

    values: torch.Tensor  # [C] float32, max over positions
    pos: torch.Tensor  # [C] long, first position holding the max
    n_positions: int  # T

    @classmethod
    def of(cls, scores: torch.Tensor) -> "PositionMax":
        """scores [T, C] -> PositionMax."""
        T = scores.shape[0]
        values = scores.amax(0)  # [C]
        # first t with scores[t, c] == max: smallest t among the hits
        hit = scores == values
        pos = torch.where(hit, torch.arange(T, device=scores.device).unsqueeze(1), T).amin(0)
        return cls(values, pos, T)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def device(self) -> torch.device:
        return self.values.device


Scores = Union[torch.Tensor, PositionMax]


class EntryCount:
    """The paper's unit: how many (module, position, channel) entries of the per_token ranking come up to the first
    entry of each ranked channel (the authors count entries, not channels: their n at the crossing).

    Channel n's first entry is its maximum s_n; every entry above s_n belongs to a channel ranked before it, so its
    entry index is 1 + #{entries > s_n} (ties between equal floats aside). Fed each target's [T, C] scores as Stage 1
    reduces them, it keeps only entries above the running ``top``-th channel maximum (no later channel of the top can
    count anything below it): at most ~top x T values, whatever the model's size.
    """

    def __init__(self, top: int):
        self.top = int(top)
        self.maxima = torch.empty(0)  # [<= top] the best channel maxima so far, float32 CPU
        self.kept = torch.empty(0)  # [m] entries above the current floor, float32 CPU
        self.kept_ch = torch.empty(0, dtype=torch.long)  # [m] their flat channel ids
        self.offset = 0  # flat id of the next target's first channel

    def _floor(self) -> float:
        return float(self.maxima.min()) if self.maxima.numel() >= self.top else float("-inf")

    def add(self, scores: torch.Tensor) -> None:
        """scores [T, C] of one target (any device)."""
        s = scores.detach().float()
        mx = s.amax(0).cpu()  # [C]
        self.maxima = torch.cat([self.maxima, mx]).topk(min(self.top, self.maxima.numel() + mx.numel())).values
        floor = self._floor()
        hit = s > floor  # [T, C]
        ch = hit.nonzero()[:, 1].cpu() + self.offset  # row-major, as s[hit]
        keep = self.kept > floor
        self.kept = torch.cat([self.kept[keep], s[hit].cpu()])
        self.kept_ch = torch.cat([self.kept_ch[keep], ch])
        self.offset += s.shape[1]

    def first_entries(self, values: torch.Tensor) -> List[int]:
        """values [n] (ranked channel scores, each >= the floor) -> 1-based entry index of each channel's first
        entry in the per_token order."""
        kept = self.kept.sort().values
        above = kept.numel() - torch.searchsorted(kept, values.float().cpu(), right=True)  # [n] entries > s_n
        return [int(a) + 1 for a in above]

    def settled(self, channel: int, value, width: float) -> bool:
        """Whether the entry count of flat ``channel`` (scoring ``value``, its maximum) holds for any scores within
        ``width`` of these: no entry of another channel within ``width`` of it (its own never count), and every
        such entry kept (above the floor)."""
        v = float(value)
        near = (self.kept >= v - width) & (self.kept <= v + width) & (self.kept_ch != int(channel))
        return v - width > self._floor() and not bool(near.any())


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
    dev = scores[0].device
    sizes = torch.tensor([s.shape[-1] for s in scores], device=dev)
    ch_offsets = torch.cumsum(sizes, 0) - sizes  # [M]
    total_channels = int(sizes.sum())
    if isinstance(scores[0], PositionMax):
        return _rank_position_max(scores, ranking, top, sizes, ch_offsets, dev)
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


def _rank_position_max(scores: Sequence[PositionMax], ranking: str, top: int, sizes: torch.Tensor,
                       ch_offsets: torch.Tensor, dev: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """rank_channels for PositionMax scores: "max" ties by channel order, "per_token" ties by the flat index of
    each channel's first max entry (module, position, channel), exactly as ranking the [T, C] entries would."""
    if ranking == "mean":
        raise ValueError("ranking 'mean' needs the scores of every position, not their PositionMax")
    vals = torch.cat([s.values.to(dev) for s in scores])  # [N]
    if ranking == "max":
        v, ids = _stable_topk(vals, top)
        return ids, v
    T = scores[0].n_positions
    m = torch.repeat_interleave(torch.arange(len(scores), device=dev), sizes)  # [N] module of each channel
    c = torch.arange(vals.numel(), device=dev) - ch_offsets[m]  # channel within its module
    # flat entry index of each channel's first max: entries of target m start at T * (channels before m)
    entry = ch_offsets[m] * T + torch.cat([s.pos.to(dev) for s in scores]) * sizes[m] + c  # [N]
    order = torch.argsort(entry)  # channels in entry order: index ties of _stable_topk follow it
    v, j = _stable_topk(vals[order], top)
    return order[j], v


# ---- Ranking --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Ranking:
    """Distinct channels of ``targets`` best first: ``channels`` [n] flat ids (target offset + channel), ``scores``
    [n]. Stage 2 works on ``rank_tensors()``; ``Neuron`` objects are made only for results (``neurons``)."""

    targets: List[Target]
    channels: torch.Tensor  # [n] long, flat channel ids, best first, distinct
    scores: torch.Tensor  # [n] float32, the ranker's score of each (higher = masked first)
    _ranks: Optional[List[torch.Tensor]] = dataclasses.field(default=None, repr=False)
    info: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)  # the ranker's timings and stats

    def __post_init__(self):
        self.channels = self.channels.detach().to("cpu", torch.long).reshape(-1)
        self.scores = self.scores.detach().to("cpu", torch.float32).reshape(-1)
        self.index = NeuronIndex(self.targets)

    def __len__(self) -> int:
        return int(self.channels.numel())

    @classmethod
    def from_neurons(cls, targets: Sequence[Target], neurons: Iterable) -> "Ranking":
        """A ranking in the given order (names or Neuron objects, validated; duplicates keep their first place)."""
        index = NeuronIndex(targets)
        flat = [index.flat_id(n) for n in index.resolve(neurons)]
        seen: Dict[int, None] = dict.fromkeys(flat)
        ids = torch.tensor(list(seen), dtype=torch.long)
        return cls(list(targets), ids, torch.zeros(ids.numel()))

    def head(self, n: int) -> "Ranking":
        """The first ``n`` ranked channels (self when it has no more): a ranking made with ``top=n`` from the same
        scores is exactly this prefix (ties are broken by a total order)."""
        if n >= len(self):
            return self
        return Ranking(self.targets, self.channels[:n], self.scores[:n], info=self.info)

    def rank_tensors(self) -> List[torch.Tensor]:
        """Per target [C_m] long on the target's device: the channel's position in the ranking, ``len(self)`` when
        unranked. Built once. Prefix n masks ``rank < n``; a batch of prefixes ``rank[None] < ns[:, None]``."""
        if self._ranks is None:
            n = len(self)
            flat = torch.full((self.index.total,), n, dtype=torch.long)
            flat[self.channels] = torch.arange(n, dtype=torch.long)
            parts = torch.split(flat, [t.num_channels for t in self.targets])
            self._ranks = [p.to(t.device) for p, t in zip(parts, self.targets)]
        return self._ranks

    def neuron(self, i: int) -> Neuron:
        """The i-th ranked channel as a Neuron (module, channel, layer, kind)."""
        return self.index.neuron(int(self.channels[i]))

    def neurons(self, n: Optional[int] = None) -> List[Neuron]:
        """The first ``n`` (default: all) ranked channels as Neurons."""
        return [self.neuron(i) for i in range(len(self) if n is None else min(n, len(self)))]


def ranking_from_scores(targets: Sequence[Target], scores: Sequence[Scores], mode: str, top: int) -> Ranking:
    """rank_channels over per-target scores -> Ranking of at most ``top`` channels."""
    ids, vals = rank_channels(scores, mode, top=top)
    return Ranking(list(targets), ids, vals)
