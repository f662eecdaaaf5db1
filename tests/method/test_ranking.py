"""Ranking: rank_channels against the literal per-entry Python loop, PositionMax, Ranking rank tensors."""
from __future__ import annotations

import pytest
import torch

from achilles_fast.method.ranking import PositionMax, Ranking, rank_channels
from achilles_fast.models.registry import discover_targets

from conftest import tiny_model


def _python_rank(scores, mode, top):
    """Literal per-entry Python reference (what the paper's code does)."""
    entries = []
    off = 0
    for s in scores:
        T, C = s.shape
        if mode == "per_token":
            for t in range(T):
                for c in range(C):
                    entries.append((float(s[t, c]), off + c))
        else:
            red = s.amax(0) if mode == "max" else s.mean(0)
            for c in range(C):
                entries.append((float(red[c]), off + c))
        off += C
    order = sorted(range(len(entries)), key=lambda i: (-entries[i][0], i))
    seen, out = set(), []
    for i in order:
        ch = entries[i][1]
        if ch not in seen:
            seen.add(ch)
            out.append(ch)
        if len(out) == top:
            break
    return out


@pytest.mark.parametrize("mode", ["per_token", "max", "mean"])
def test_ranking_matches_python_loop(mode):
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(9, c, generator=g) for c in (13, 5, 31)]
    scores[1][3, 2] = scores[0][0, 0]  # an exact tie across modules
    for top in (1, 7, 49):
        ids, vals = rank_channels(scores, mode, top=top)
        assert ids.tolist() == _python_rank(scores, mode, top)
        assert torch.all(vals[:-1] >= vals[1:])


@pytest.mark.parametrize("mode", ["per_token", "max"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_from_position_max(mode, seed):
    """PositionMax (max over positions + first argmax) ranks exactly like the [T, C] scores, ties included."""
    g = torch.Generator().manual_seed(seed)
    # small integers: many exact ties inside a channel, across channels and across modules
    scores = [torch.randint(0, 6, (7, c), generator=g).float() for c in (11, 4, 23)]
    reduced = [PositionMax.of(s) for s in scores]
    for s, r in zip(scores, reduced):
        assert torch.equal(r.values, s.amax(0))
        assert torch.equal(s[r.pos, torch.arange(s.shape[1])], r.values)
        assert all(bool((s[: int(t), c] < r.values[c]).all()) for c, t in enumerate(r.pos.tolist()))
    for top in (1, 5, 38, 100):
        ids, vals = rank_channels(reduced, mode, top=top)
        ref_ids, ref_vals = rank_channels(scores, mode, top=top)
        assert ids.tolist() == ref_ids.tolist() == _python_rank(scores, mode, top)
        assert torch.equal(vals, ref_vals)
    with pytest.raises(ValueError, match="mean"):
        rank_channels(reduced, "mean")




def test_ranking_rank_tensors_and_neurons():
    """rank tensors: position of each channel in the ranking, len(ranking) for unranked channels."""
    targets = discover_targets(tiny_model("llama"))
    g = torch.Generator().manual_seed(3)
    total = sum(t.num_channels for t in targets)
    flat = torch.randperm(total, generator=g)[:17]
    r = Ranking(targets, flat, torch.linspace(1, 0, 17))
    ranks = torch.cat(r.rank_tensors())
    assert ranks.shape == (total,)
    assert torch.equal(ranks[flat], torch.arange(17))
    others = torch.ones(total, dtype=torch.bool)
    others[flat] = False
    assert torch.all(ranks[others] == 17)
    ns = torch.tensor([0, 1, 5, 17])
    masked = ranks[None] < ns[:, None]  # a batch of prefixes
    assert masked.sum(1).tolist() == [0, 1, 5, 17]
    neurons = r.neurons(3)
    assert [r.index.flat_id(n) for n in neurons] == flat[:3].tolist()
    assert all(n.layer is not None and n.kind for n in neurons)


def test_ranking_from_neurons_dedupes_and_validates():
    targets = discover_targets(tiny_model("llama"))
    a, b = f"{targets[0].name}:3", f"{targets[2].name}:7"
    r = Ranking.from_neurons(targets, [a, b, a])
    assert [n.name for n in r.neurons()] == [a, b]
    with pytest.raises(KeyError):
        Ranking.from_neurons(targets, [f"{targets[0].name}:99999"])
