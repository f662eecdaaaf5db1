"""The baselines' common path (ScoredRanker): exact restore of weights, grad flags and .grad; dropped entries."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_bit_identical, weights_snapshot
from rankers_common import ids_of, tiny

from achilles_fast.method.api import find_critical
from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import _RANKERS, ranker_names
from achilles_fast.method.rankers._scored import ScoredRanker, drop_small
from achilles_fast.method.text import DEFAULT_TEXT
from achilles_fast.models.registry import discover_targets

SCORED = [n for n in ranker_names() if isinstance(_RANKERS[n].factory, type)
          and issubclass(_RANKERS[n].factory, ScoredRanker)]


def test_every_baseline_is_scored():
    assert set(SCORED) == set(ranker_names()) - {"sensitivity"} and len(SCORED) >= 7


@pytest.mark.parametrize("method", SCORED)
def test_baselines_restore_weights_grad_flags_and_grads(method):
    model, tok = tiny()
    params = list(model.parameters())
    for i, p in enumerate(params):  # a mixed pattern of flags, and an existing .grad on one parameter
        p.requires_grad_(i % 3 != 0)
    params[1].grad = torch.full_like(params[1], 0.5)
    flags = [p.requires_grad for p in params]
    snap = weights_snapshot(model)
    model.train()
    r = find_critical(model, tok, DEFAULT_TEXT, ranker=method, max_tokens=40, epsilon=0.05, max_neurons=20,
                      batch_size=3, progress=False)
    assert [p.requires_grad for p in params] == flags
    assert torch.equal(params[1].grad, torch.full_like(params[1], 0.5))
    assert all(p.grad is None for i, p in enumerate(params) if i != 1)
    assert model.training
    assert_bit_identical(model, snap)
    assert r.params["ranker"] == method and r.curve and set(r.timings) == {"rank", "stage2", "total"}
    assert len(r.top_ranked) == 20 and len({n.name for n in r.top_ranked}) == 20


def test_signed_floor_drops_small_entries():
    v = torch.tensor([[1e-7, -2e-6, 3.0], [0.0, -1e-6, 1e-6]])
    assert torch.equal(torch.isinf(drop_small(v, 1e-6)), torch.tensor([[True, False, False], [True, True, True]]))


def test_per_token_cuts_channels_with_no_entry_left():
    """A channel whose every entry was dropped (-inf) is never ranked."""
    class Fixed(ScoredRanker):
        mode = "per_token"

        def scores(self, model, targets, ids):
            s = torch.full((ids.shape[1], targets[0].num_channels), float("-inf"))  # [T, C]
            s[0, 3], s[2, 1], s[4, 3] = 2.0, 5.0, 1.0
            return [s]

    model, tok = tiny()
    targets = discover_targets(model, "down_proj")[:1]
    r = Fixed(FindConfig()).rank(model, targets, ids_of(tok, 8))
    assert r.channels.tolist() == [1, 3] and r.scores.tolist() == [5.0, 2.0]
