"""``ScoredRanker``: the base of the baselines, a ranking from one score per channel or per (position, channel)."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ...models.targets import Target
from ...utils import eval_mode
from ..ranking import Ranking, ranking_from_scores
from . import Ranker


class ScoredRanker(Ranker):
    """Subclasses give ``scores``; ``mode = "max"``: one score per output channel, ranked descending (ties by
    channel order); ``mode = "per_token"``: one per (position, channel) entry, a channel entering at its first entry,
    entries of -inf never ranked (a channel with no other entry is cut). At most ``config.max_neurons`` channels."""

    mode = "max"

    def scores(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> List[torch.Tensor]:
        """ids [1, T] on the embedding device -> per target [C_m] (mode max) or [T, C_m] (per_token); higher =
        masked first. Runs in eval mode."""
        raise NotImplementedError

    def rank(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> Ranking:
        dev = model.get_input_embeddings().weight.device
        ids2 = (ids if ids.dim() == 2 else ids.unsqueeze(0)).to(dev)  # [1, T]
        with eval_mode(model):
            scores = self.scores(model, targets, ids2)
        r = ranking_from_scores(targets, scores, self.mode, self.config.max_neurons)
        if self.mode != "per_token":
            return r
        keep = torch.isfinite(r.scores)  # channels whose every entry was dropped come last: cut them
        return r if bool(keep.all()) else Ranking(r.targets, r.channels[keep], r.scores[keep])


def drop_small(v: torch.Tensor, floor: float) -> torch.Tensor:
    """Entries with |v| <= floor -> -inf (never ranked), as the paper's scripts skip them."""
    return v.masked_fill(v.abs() <= floor, float("-inf"))
