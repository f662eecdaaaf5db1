"""``superweight``: the super-weight heuristic (Yu et al. 2024) on the MLP down projections: in each layer the input
channel j* with the largest |input| spike, and output channel i scored by max_t |x_t,j*| * |W[i, j*]|, the spike
routed through candidate super weight W[i, j*] into output i. Other targets score 0."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from ...models.registry import discover_targets
from ...models.targets import Target
from . import register_ranker
from ._capture import activations
from ._scored import ScoredRanker


class SuperweightRanker(ScoredRanker):
    def scores(self, model, targets, ids):
        _, in_max = activations(model, targets, ids, want_input=True)
        try:
            down = {t.name for t in discover_targets(model, "down_proj")}
        except ValueError:  # unregistered family: the caller opted into discovery to get here
            down = {t.name for t in discover_targets(model, "down_proj", allow_discovery=True)}
        return superweight_scores(targets, in_max, down)


def superweight_scores(targets: Sequence[Target], in_max: Dict[str, torch.Tensor], down: set) -> List[torch.Tensor]:
    """Per target [C]: the down projections' (``down``: their names) spike routed to each output; others 0."""
    scores = []
    for t in targets:
        dim = t.weight_dim
        if t.name not in down:
            scores.append(torch.zeros(t.num_channels))
            continue
        if dim is None or not hasattr(t.module, "weight"):
            raise ValueError(f"superweight baseline: {t.name} has no weight matrix layout ({t.layout})")
        x = in_max[t.name]  # [C_in]
        j = int(torch.argmax(x))
        w = t.module.weight.detach()
        col = (w[:, j] if dim == 0 else w[j, :]).float().abs().cpu()  # [C]
        scores.append(col * x[j])
    return scores


register_ranker("superweight", SuperweightRanker, help="the super-weight heuristic on the down projections")
