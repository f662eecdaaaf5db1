"""random: a seeded permutation, scores equal to torch.rand of the seed."""
from __future__ import annotations

import torch

from rankers_common import ids_of, ranked, scores, tiny

from achilles_fast.models.registry import discover_targets


def test_random_is_seeded_and_distinct():
    model, tok = tiny()
    targets = discover_targets(model, "down_proj")
    a, _ = ranked(model, targets, ids_of(tok), "random", seed=3, top=50)
    b, _ = ranked(model, targets, ids_of(tok), "random", seed=3, top=50)
    c, _ = ranked(model, targets, ids_of(tok), "random", seed=4, top=50)
    assert a == b and a != c and len({n.name for n in a}) == 50
    assert len({n.layer for n in a}) > 1


def test_random_scores_are_one_seeded_draw():
    model, tok = tiny()
    targets = discover_targets(model, "all")
    got = torch.cat(scores("random", model, targets, ids_of(tok), seed=5))
    assert torch.equal(got, torch.rand(got.numel(), generator=torch.Generator().manual_seed(5)))
