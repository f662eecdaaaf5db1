"""One Stage 1 pass, scores at several K: the K grid and every section that needs scores share it.

The noise of sample k depends only on (seed, k) (``ops.noisy_embeds``), and the score at K is the mean of the
first K samples' |noisy - clean|, so one pass up to max(K) yields every K on the way: the accumulators are read
(divided by K, reduced to ``PositionMax``) when the sample count reaches each K (``sensitivity_scores(...,
snapshots=ks)``). The chunks are cut at those K as well; apart from the float32 summation order (chunking), the
scores at each K are those of ``sensitivity_scores(k=K)`` (``tests/studies/study/test_study_sections.py`` checks it).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ...method.config import FindConfig
from ...method.ranking import Ranking, Scores, ranking_from_scores
from ...method.stage1 import lowp_forwards, plan_groups, sensitivity_scores
from ...models.targets import Target
from ...utils import progress_bar


def snapshot_scores(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, ks: Sequence[int],
                    config: FindConfig, progress: bool = False) -> Dict[int, List[Scores]]:
    """Stage 1 (``config``: alpha, seed, ranking, memory budgets, stage1_dtype: not certified here, the study
    reports what each K gives) up to max(ks) samples on ids [T]
    -> {K: per-target scores} (``PositionMax`` for the per_token / max rankings, [C] means for ``mean``)."""
    per_position = config.ranking != "mean"
    T = int(ids.numel())
    groups = plan_groups(model, targets, T, per_position, config.max_score_mb)
    with progress_bar(max(ks) * len(groups), "Stage 1 (K grid): noisy samples", "sample", progress) as bar, \
            lowp_forwards(model, config.stage1_dtype), torch.no_grad():
        out = sensitivity_scores(model, targets, ids, alpha=config.alpha, seed=config.seed, per_position=per_position,
                                 max_batch_tokens=config.max_batch_tokens, groups=groups, reduce_positions=True,
                                 progress=bar.update if bar is not None else None, snapshots=ks)
    if not per_position:  # [C] sums over positions -> means, as find_critical's "mean" ranking has them
        out = {K: [s / T for s in scores] for K, scores in out.items()}
    return out


def rank_subset(targets: Sequence[Target], scores: Dict[str, Scores], config: FindConfig,
                top: Optional[int] = None) -> Ranking:
    """Ranking of ``targets`` (scan order) from scores keyed by target name (e.g. one component's targets out of
    a scope='all' pass); ranks as ``config.ranking``, at most ``top`` (default ``config.max_neurons``) channels."""
    return ranking_from_scores(list(targets), [scores[t.name] for t in targets], config.ranking,
                               config.max_neurons if top is None else top)
