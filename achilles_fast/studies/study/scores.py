"""One Stage 1 pass, scores at several K: the K grid and every section that needs scores share it.

The noise of sample k depends only on (seed, k) (``ops.noisy_embeds``), and the score at K is the mean of the
first K samples' |noisy - clean|, so one pass up to max(K) yields every K on the way: the accumulators are read
(divided by K, reduced to ``PositionMax``) when the sample count reaches each K. The chunks are cut at those K as
well; apart from the float32 summation order (chunking), the scores at each K are those of
``method.stage1.sensitivity_scores(k=K)`` (``tests/studies/test_study_sections.py`` checks it).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ... import ops
from ...method.config import FindConfig
from ...method.ranking import PositionMax, Ranking, Scores, ranking_from_scores
from ...method.stage1 import _autocast, _Capture, auto_batch_tokens, input_embeddings, plan_groups
from ...models.targets import Target
from ...utils import progress_bar


def snapshot_scores(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, ks: Sequence[int],
                    config: FindConfig, progress: bool = False) -> Dict[int, List[Scores]]:
    """Stage 1 (``config``: alpha, seed, ranking, memory budgets, stage1_dtype) up to max(ks) samples on ids [T]
    -> {K: per-target scores} (``PositionMax`` for the per_token / max rankings, [C] means for ``mean``)."""
    ks = sorted({int(k) for k in ks})
    per_position = config.ranking != "mean"
    T = int(ids.numel())
    embeds = input_embeddings(model, ids)  # [T, H]
    kb = max(1, min(ks[-1], (config.max_batch_tokens or auto_batch_tokens(embeds.device)) // T))
    groups = plan_groups(model, targets, T, per_position, config.max_score_mb)
    out: Dict[int, List[Optional[Scores]]] = {k: [None] * len(targets) for k in ks}
    with progress_bar(ks[-1] * len(groups), "Stage 1 (K grid): noisy samples", "sample", progress) as bar, \
            _autocast(model, config.stage1_dtype), torch.no_grad():
        for group in groups:
            with _Capture([targets[i] for i in group], stop_early=True) as cap:
                cap.run(model, embeds.unsqueeze(0))
                for j, t in enumerate(cap.targets):
                    if cap.clean[j] is None:
                        raise RuntimeError(f"target {t.name} did not run during the forward pass")
                    shape = cap.clean[j].shape if per_position else cap.clean[j].shape[-1:]
                    cap.acc[j] = torch.zeros(shape, dtype=torch.float32, device=cap.clean[j].device)
                cap.mode = "noisy"
                done = 0
                for k in ks:
                    while done < k:
                        n = min(kb, k - done)
                        cap.run(model, ops.noisy_embeds(embeds, float(config.alpha), int(config.seed), done, n))
                        done += n
                        if bar is not None:
                            bar.update(n)
                    for j, i in enumerate(group):
                        a = cap.acc[j] / k
                        out[k][i] = PositionMax.of(a) if per_position else a / T
                cap.clean = []
    return out  # type: ignore[return-value]


def rank_subset(targets: Sequence[Target], scores: Dict[str, Scores], config: FindConfig,
                top: Optional[int] = None) -> Ranking:
    """Ranking of ``targets`` (scan order) from scores keyed by target name (e.g. one component's targets out of
    a scope='all' pass); ranks as ``config.ranking``, at most ``top`` (default ``config.max_neurons``) channels."""
    return ranking_from_scores(list(targets), [scores[t.name] for t in targets], config.ranking,
                               config.max_neurons if top is None else top)
