"""``random``: a seeded random permutation of all channels (``config.seed``), searched by Stage 2 like any ranking.

The paper's own random baseline (random draws per level, no search) is ``studies.baselines.random_levels``.
"""
from __future__ import annotations

import torch

from . import register_ranker
from ._scored import ScoredRanker


class RandomRanker(ScoredRanker):
    def scores(self, model, targets, ids):
        g = torch.Generator().manual_seed(int(self.config.seed))
        flat = torch.rand(sum(t.num_channels for t in targets), generator=g)  # [N]
        return list(torch.split(flat, [t.num_channels for t in targets]))


register_ranker("random", RandomRanker, help="a seeded random order")
