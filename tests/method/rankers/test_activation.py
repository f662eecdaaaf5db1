"""activation: mean |activation| over positions, from a plain forward's outputs."""
from __future__ import annotations

import torch

from rankers_common import ids_of, record, scores, tiny

from achilles_fast.models.registry import discover_targets


def test_activation_scores_are_mean_abs():
    model, tok = tiny()
    ids = ids_of(tok)
    targets = discover_targets(model, "down_proj")
    outs = record(model, targets, ids, lambda a, o: o)
    got = scores("activation", model, targets, ids)
    for i, t in enumerate(targets):
        assert torch.allclose(got[i], outs[t.name][0].abs().mean(0), rtol=1e-5)
