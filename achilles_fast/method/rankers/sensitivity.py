"""``sensitivity``: the paper's Stage 1 (``method.stage1``) as a Ranker."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...models.targets import Target
from ...utils import progress_bar
from ..certify import certify
from ..ranking import EntryCount, Ranking, ranking_from_scores
from ..stage1 import adaptive_ranking, check_scores, lowp_forwards, plan_groups, sensitivity_scores
from . import Ranker, register_ranker


class SensitivityRanker(Ranker):
    """Mean |f(x) - f(x + alpha eps)| over K noisy copies, ranked by ``config.ranking``. ``stats`` receives forward
    counts and chunk sizes of the last ``rank`` call. With ``k="auto"`` (``adaptive_ranking``) K stops on the
    Stage 2 oracle given to ``use_stage2``; with ``stage1_dtype`` (fixed K) the low-precision ranking is kept only
    where that oracle's answer is certified (``method.certify``), else Stage 1 runs again in the model's dtype."""

    timing_key = "stage1"

    def __init__(self, config, progress: bool = False):
        super().__init__(config, progress)
        self.sizes_of = None  # Stage2Oracle: ranking -> critical-set size per epsilon (k="auto", certification)

    def use_stage2(self, sizes_of) -> None:
        self.sizes_of = sizes_of

    def rank(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> Ranking:
        cfg = self.config
        if cfg.k == "auto":
            if cfg.stage1_dtype is not None:
                self.stats["stage1_certified"] = {"dtype": cfg.stage1_dtype, "certified": False,
                                                  "reason": "k='auto' is not certified (its own stopping rule)"}
            return self._rank_auto(model, targets, ids)
        if cfg.stage1_dtype is None:
            return self._rank_fixed(model, targets, ids, None)[0]
        low, entries = self._rank_fixed(model, targets, ids, cfg.stage1_dtype)
        cert = self.stats["stage1_certified"] = certify(model, targets, ids, cfg, low, entries, self.sizes_of)
        if cert["certified"]:
            return low
        low_stats = {k: self.stats[k] for k in ("stage1_forwards", "stage1_chunks") if k in self.stats}
        ranking = self._rank_fixed(model, targets, ids, None, " (again in the model's dtype)")[0]
        cert["low_precision"] = low_stats
        return ranking

    def _rank_fixed(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, dtype, what: str = ""):
        """Stage 1 with a fixed K under ``dtype`` autocast (None: the model's dtype) -> (Ranking, the per_token
        entry counts or None)."""
        cfg = self.config
        per_position = cfg.ranking != "mean"
        groups = plan_groups(model, targets, int(ids.numel()), per_position, cfg.max_score_mb)
        entries = EntryCount(cfg.max_neurons) if cfg.ranking == "per_token" else None
        with progress_bar(cfg.k * len(groups), "Stage 1: noisy samples" + what, "sample", self.progress) as bar, \
                lowp_forwards(model, dtype), torch.no_grad():
            scores = sensitivity_scores(model, targets, ids, k=cfg.k, alpha=cfg.alpha, seed=cfg.seed,
                                        per_position=per_position, max_batch_tokens=cfg.max_batch_tokens,
                                        groups=groups, reduce_positions=True,
                                        progress=bar.update if bar is not None else None, stats=self.stats,
                                        entries=entries)
        if cfg.ranking == "mean":  # [C] sums over positions -> means
            scores = [sc / ids.numel() for sc in scores]
        ranking = check_scores(ranking_from_scores(targets, scores, cfg.ranking, cfg.max_neurons), cfg.alpha)
        if entries is not None:  # the paper's unit: per_token entries up to each channel
            ranking.info["paper_entries"] = entries.first_entries(ranking.scores)
        return ranking, entries

    def _rank_auto(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> Ranking:
        cfg = self.config
        if self.sizes_of is None:
            raise ValueError("k='auto' stops on the Stage 2 sets: give the ranker Stage 2's oracle with use_stage2 "
                             "(find_critical and rank_neurons do)")
        with progress_bar(cfg.max_k, "Stage 1: noisy samples (K auto)", "sample", self.progress) as bar:
            return adaptive_ranking(model, targets, ids, self.sizes_of, alpha=cfg.alpha, seed=cfg.seed,
                                    mode=cfg.ranking, top=cfg.max_neurons, max_k=cfg.max_k,
                                    max_batch_tokens=cfg.max_batch_tokens, max_score_mb=cfg.max_score_mb,
                                    stage1_dtype=cfg.stage1_dtype, progress=bar.update if bar is not None else None,
                                    stats=self.stats)


register_ranker("sensitivity", SensitivityRanker, help="the paper's Stage 1: mean |output change| under noisy "
                "embeddings")
