"""``activation_signed``: the paper's activation baseline (qqqqqqqzx/The-Achilles-Heel-of-LLMs, ``comparison/``):
every (module, position, channel) entry ranked by its signed activation y, descending, a channel entering at its
first entry, ties in entry order; entries with |y| <= 1e-6 are dropped as the paper's scripts drop them. Ours
(``activation``) ranks mean |y| over positions: large negative values count too, and one position does not decide."""
from __future__ import annotations

from . import register_ranker
from ._capture import activations
from ._scored import ScoredRanker, drop_small

FLOOR = 1e-6  # the paper drops entries with |y| <= this


class ActivationSignedRanker(ScoredRanker):
    mode = "per_token"

    def scores(self, model, targets, ids):
        ys, _ = activations(model, targets, ids, signed=True)
        return [drop_small(ys[t.name], FLOOR) for t in targets]


register_ranker("activation_signed", ActivationSignedRanker, help="the paper's: signed activation entries",
                variant_of="activation")
