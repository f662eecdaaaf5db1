"""``activation``: mean |activation| of each output channel over the text."""
from __future__ import annotations

from . import register_ranker
from ._capture import activations
from ._scored import ScoredRanker


class ActivationRanker(ScoredRanker):
    def scores(self, model, targets, ids):
        mean_abs, _ = activations(model, targets, ids)
        return [mean_abs[t.name] for t in targets]


register_ranker("activation", ActivationRanker, help="mean |activation|")
