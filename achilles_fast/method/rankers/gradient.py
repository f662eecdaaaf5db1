"""``gradient``: mean |d loss / d activation| of each output channel over the text."""
from __future__ import annotations

from . import register_ranker
from ._capture import gradients
from ._scored import ScoredRanker


class GradientRanker(ScoredRanker):
    def scores(self, model, targets, ids):
        stats = gradients(model, targets, ids)
        return [stats[t.name][1].abs().mean(0) for t in targets]


register_ranker("gradient", GradientRanker, help="mean |d loss / d activation|")
