"""``taylor``: |sum_t activation * gradient|, the first-order estimate of the loss change when the channel is zeroed
(activation x gradient attribution)."""
from __future__ import annotations

from . import register_ranker
from ._capture import gradients
from ._scored import ScoredRanker


class TaylorRanker(ScoredRanker):
    def scores(self, model, targets, ids):
        stats = gradients(model, targets, ids)
        return [(stats[t.name][0] * stats[t.name][1]).sum(0).abs() for t in targets]


register_ranker("taylor", TaylorRanker, help="|sum activation x gradient|")
