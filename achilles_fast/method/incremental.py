"""Incremental Stage 2 evaluation: each prefix runs from the first decoder layer whose mask differs from a cached one.

Consecutive prefixes differ in a few channels, and every decoder layer below the lowest layer of those channels
computes exactly what it computed for the cached prefix. ``PrefixCache`` keeps, per evaluation window, the output of
every decoder layer for one reference prefix (the last one evaluated on that window; in a batched forward the largest
prefix of the batch, the next batch's closest); a forward of prefixes ``ns`` starts at the lowest first changed layer
among them (one batched forward: its elements share the layers that run) and the layers below return the cached
outputs (``models.layers.LayerStack``), so the model's own forward, the fused LM-head NLL included, does the rest.

The first changed layer of prefix set S against the reference R is the lowest layer of a channel in their symmetric
difference (for prefixes m, n of one ranking: the channels ranked in [min(m, n), max(m, n))); a channel of a target
outside the layer stack (no layer) changes layer 0: a full forward. Exactness is self-checked once per evaluator (the
first evaluated prefix is evaluated again from the middle layer); a family that cannot (``FamilySpec.incremental``),
a layer output that is not made of tensors, a failed self-check or a cache over the memory budget (a quarter of free
memory, as Stage 1's scores) fall back to full forwards with the reason in ``stats()``.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..models.layers import LayerStack, UnsupportedOutput, layer_stack, nbytes, stack_rows, take_row
from ..models.targets import Target
from ..utils import over_budget
from .budget import auto_score_bytes
from .ranking import Ranking


class PrefixCache:
    """Per window: the masked channel set (flat ids) of the reference prefix and every layer's output under it."""

    def __init__(self, model: nn.Module, windows: int, tokens: int, batch: int, budget_bytes: Optional[int] = None):
        stack = layer_stack(model)
        self.reason: Optional[str] = stack if isinstance(stack, str) else None
        self.stack: Optional[LayerStack] = None if isinstance(stack, str) else stack
        self.W = windows
        self.checked = False  # the self-check passed
        self.layers_run = 0  # decoder layers run, summed over forwards
        self.forwards = 0
        self._maps: Dict[int, Tuple[List[Target], Tuple[str, ...], torch.Tensor]] = {}
        cfg = getattr(model, "config", None)
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self._layer_types = getattr(cfg, "layer_types", None)
        self._clear()
        if self.stack is not None:
            emb = model.get_input_embeddings().weight
            need = len(self.stack) * (windows + batch) * tokens * emb.shape[1] * max(4, emb.element_size())
            if budget_bytes is None:
                budget_bytes = auto_score_bytes(emb.device if emb.device.type != "meta" else torch.device("cpu"))
            refused = over_budget("the layer cache needs", need, budget_bytes)
            if refused:
                self._fall_back(refused)

    @functools.cached_property
    def signatures(self) -> List[tuple]:
        """Per layer, what picks its kernels' paths (NLLEvaluator checks shared forwards once per signature; made at
        the first check)."""
        return [] if self.stack is None else self.stack.signatures(self._layer_types)

    @property
    def active(self) -> bool:
        return self.reason is None

    def _clear(self) -> None:
        self._ref: List[Optional[torch.Tensor]] = [None] * self.W  # per window: flat ids masked, or None
        self._ref_key: List[Optional[Tuple[str, ...]]] = [None] * self.W  # the targets those ids index
        self._outs: List[List[object]] = [[None] * self.W for _ in range(len(self.stack or []))]  # [layer][window]

    def _fall_back(self, reason: str) -> None:
        self.reason = reason
        self._clear()

    def _layer_map(self, ranking: Ranking) -> Tuple[Tuple[str, ...], torch.Tensor]:
        """(target names, [total] long: the stack layer of each flat channel id of ``ranking``, 0 outside it)."""
        got = self._maps.get(id(ranking.targets))
        if got is None or got[0] is not ranking.targets:
            layers = [self.stack.layer_of(t.name, t.layer) for t in ranking.targets]
            flat = torch.cat([torch.full((t.num_channels,), 0 if l is None else l, dtype=torch.long)
                              for t, l in zip(ranking.targets, layers)])
            got = self._maps[id(ranking.targets)] = (ranking.targets, tuple(t.name for t in ranking.targets), flat)
        return got[1], got[2]

    def _first_changed(self, w: int, key: Tuple[str, ...], layer_of: torch.Tensor, chans: torch.Tensor) -> int:
        """Lowest layer whose mask differs between window ``w``'s reference and the set ``chans`` (0: no reference)."""
        ref = self._ref[w]
        if ref is None or self._ref_key[w] != key:
            return 0
        diff = torch.cat([ref[~torch.isin(ref, chans)], chans[~torch.isin(chans, ref)]])
        return len(self.stack) if diff.numel() == 0 else int(layer_of[diff].min())

    def start_layer(self, ranking: Ranking, ns: Sequence[int], windows: Sequence[int]) -> int:
        """The layer a forward of prefixes ``ns[j]`` on windows ``windows[j]`` starts at (0: a full forward)."""
        if not self.active:
            return 0
        key, layer_of = self._layer_map(ranking)
        return min(self._first_changed(w, key, layer_of, ranking.channels[:n]) for n, w in zip(ns, windows))

    def changed_layer(self, ranking: Ranking, m: int, n: int) -> int:
        """The lowest layer whose mask differs between prefixes ``m`` and ``n`` of ``ranking`` (no layer: the stack's
        length)."""
        lo, hi = min(m, n), max(m, n)
        if lo == hi:
            return len(self.stack)
        _, layer_of = self._layer_map(ranking)
        return int(layer_of[ranking.channels[lo:hi]].min())

    @staticmethod
    def keepers(ns: Sequence[int], windows: Sequence[int]) -> Dict[int, int]:
        """window -> the batch element whose layer outputs its cache keeps: its largest prefix in the batch."""
        keep: Dict[int, int] = {}
        for j, (n, w) in enumerate(zip(ns, windows)):
            if w not in keep or n > ns[keep[w]]:
                keep[w] = j
        return keep

    @contextlib.contextmanager
    def forward(self, ranking: Ranking, ns: Sequence[int], windows: Sequence[int],
                start: Optional[int] = None) -> Iterator[Dict[int, List[object]]]:
        """Inside: one forward of the batch (element j: prefix ``ns[j]`` on window ``windows[j]``) runs from
        ``start`` (default: ``start_layer``); afterwards each window's cache holds its largest prefix of the batch.
        Yields {layer: outputs recorded per window} (for the self-check)."""
        if not self.active:
            yield {}
            self._count(0)
            return
        key, _ = self._layer_map(ranking)
        start = self.start_layer(ranking, ns, windows) if start is None else start
        B = len(ns)
        keep = self.keepers(ns, windows)
        new: Dict[int, List[object]] = {}
        bad: List[str] = []

        def record(i: int, out) -> None:
            try:
                new[i] = [take_row(out, j, B) for j in keep.values()]
            except UnsupportedOutput as e:  # the forward itself is unaffected
                bad.append(str(e))

        standin = stack_rows([self._outs[start - 1][w] for w in windows]) if start > 0 else None
        try:
            with self.stack.run(start, standin, record):
                yield new
        except BaseException:
            self._clear()  # a forward stopped half way: nothing recorded is trusted
            raise
        self._count(start)
        if bad:
            self._fall_back(bad[0])
            return
        for i, rows in new.items():
            for w, row in zip(keep, rows):
                self._outs[i][w] = row
        for w, j in keep.items():
            self._ref[w], self._ref_key[w] = ranking.channels[:ns[j]], key

    def _count(self, start: int) -> None:
        if self.stack is not None:
            self.layers_run += len(self.stack) - start
            self.forwards += 1

    def check(self, first: torch.Tensor, again: torch.Tensor) -> None:
        """Self-check: token NLLs of a full forward vs the same batch run from the middle layer."""
        self.checked = True
        if first.shape != again.shape or not torch.allclose(first, again, rtol=1e-4, atol=1e-5):
            self._fall_back("running from a middle layer on its cached input does not reproduce the full forward")

    def nbytes(self) -> int:
        return sum(nbytes(o) for per_layer in self._outs for o in per_layer)

    def stats(self) -> Dict[str, object]:
        """Layers run per forward (mean), of how many, the cache's bytes, and why it fell back (if it did)."""
        out: Dict[str, object] = {"incremental": self.active}
        if self.stack is not None:
            out["n_layers"] = len(self.stack)
        if self.forwards:
            out["layers_per_eval"] = self.layers_run / self.forwards
        out["cache_bytes"] = self.nbytes()
        if self.reason is not None:
            out["fallback"] = self.reason
        return out
