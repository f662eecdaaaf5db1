"""``gradient_signed``: the paper's gradient baseline (qqqqqqqzx/The-Achilles-Heel-of-LLMs, ``comparison/``): every
(module, position, channel) entry ranked by its signed d loss / d y, descending, a channel entering at its first
entry, ties in entry order; entries with |value| <= 1e-8 are dropped as the paper's scripts drop them. Ours
(``gradient``) ranks mean |d loss / d y| over positions."""
from __future__ import annotations

from . import register_ranker
from ._capture import gradients
from ._scored import ScoredRanker, drop_small

FLOOR = 1e-8  # the paper drops entries with |d loss / d y| <= this


class GradientSignedRanker(ScoredRanker):
    mode = "per_token"

    def scores(self, model, targets, ids):
        stats = gradients(model, targets, ids)
        return [drop_small(stats[t.name][1], FLOOR) for t in targets]


register_ranker("gradient_signed", GradientSignedRanker, help="the paper's: signed gradient entries",
                variant_of="gradient")
