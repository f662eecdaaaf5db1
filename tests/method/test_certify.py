"""stage1_dtype: a bf16 Stage 1 keeps the float32 answer (certified, or Stage 1 again in float32)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_bit_identical, weights_snapshot

import achilles_fast as af
from achilles_fast.method import certify as cert
from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import make_ranker
from achilles_fast.method.ranking import EntryCount
from achilles_fast.method.stage2 import PrefixNLL, Stage2Oracle
from achilles_fast.method.stage1 import lowp_forwards, sensitivity_scores
from achilles_fast.method.text import text_ids
from achilles_fast.models.devices import autocast
from achilles_fast.models.registry import discover_targets

KW = dict(progress=False, top_report=5)


def _same_answer(a, b):
    assert [n.name for n in a.neurons] == [n.name for n in b.neurons]
    assert a.log10_ratio == b.log10_ratio  # Stage 2 in float32 on the same prefix: the same bits
    assert a.stats.get("paper_entries") == b.stats.get("paper_entries")
    n = len(a.neurons)
    assert [p for p in a.curve if p[0] <= n] == [p for p in b.curve if p[0] <= n]


def test_certified_length():
    s = torch.tensor([10.0, 5.0, 4.9, 1.0])  # gaps 5, 0.1, 3.9
    assert cert.certified_length(s, 0.1) == 1  # 0.1 is not > 2 margins
    assert cert.certified_length(s, 0.04) == 3
    assert cert.certified_length(s, 2.0) == 1
    assert cert.certified_length(s, 3.0) == 0
    assert cert.certified_length(s, math.inf) == 0
    assert cert.certified_length(s[:1], 0.0) == 0  # the last ranked channel has no known next


def test_entry_count_settled():
    ec = EntryCount(top=3)
    ec.add(torch.tensor([[9.0, 1.0], [8.5, 0.5]]))  # channels 0, 1
    ec.add(torch.tensor([[5.0, 7.0], [8.2, 3.0]]))  # channels 2, 3 (a second target): maxima 9, 1, 8.2, 7
    assert torch.equal(ec.kept_ch.sort().values, torch.tensor([0, 0, 2]))  # entries above the floor (7: top 3)
    assert ec.settled(0, 9.0, 0.6)  # 8.5 is its own entry: own entries never count
    assert not ec.settled(2, 8.2, 0.4)  # channel 0's 8.5 within 0.4 of 8.2: the count could move
    assert ec.settled(2, 8.2, 0.2)
    assert not ec.settled(3, 7.0, 0.1)  # reaches below the floor: entries there were dropped
    assert ec.first_entries(torch.tensor([9.0, 8.2, 7.0])) == [1, 3, 4]


@pytest.mark.parametrize("scope,epsilon", [("down_proj", 0.03), ("down_proj", 1.0), ("paper", 1.0)])
def test_bf16_stage1_gives_the_float32_answer(stories, scope, epsilon):
    model, tok = stories
    snap = weights_snapshot(model)
    a = af.find_critical(model, tok, scope=scope, epsilon=epsilon, **KW)
    b = af.find_critical(model, tok, scope=scope, epsilon=epsilon, stage1_dtype="bfloat16", **KW)
    assert_bit_identical(model, snap)
    _same_answer(a, b)
    c = b.stats["stage1_certified"]
    assert c["margin"] == pytest.approx(cert.SAFETY * c["max_error"]) and c["max_error"] > 0
    if epsilon < 0.1:  # n = 1 on its first channel, which is 2 margins above the next: certified
        assert c["certified"] and c["sizes"] == [len(b.neurons)] and "fallback" not in c
        assert "Stage 1 dtype    bfloat16, certified" in b.summary()
        assert b.top_ranked[0].score != a.top_ranked[0].score  # the bf16 scores are kept (rounded)
    else:  # hundreds of channels closer than the margin: Stage 1 again in float32
        assert not c["certified"] and c["fallback"]
        assert "ranked again in the model's dtype" in b.summary()
        assert [n.score for n in b.top_ranked] == [n.score for n in a.top_ranked]


def test_without_the_margin_bf16_changes_the_answer(stories, monkeypatch):
    """What the certificate guards against: stories260K's paper scope finds 493 channels in bf16 against 492 in
    float32 (RESULTS.md); with no margin every near-tie counts as apart and the bf16 answer is kept."""
    model, tok = stories
    a = af.find_critical(model, tok, scope="paper", **KW)
    monkeypatch.setattr(cert, "SAFETY", 0.0)
    b = af.find_critical(model, tok, scope="paper", stage1_dtype="bfloat16", **KW)
    assert b.stats["stage1_certified"]["certified"]
    assert [n.name for n in b.neurons] != [n.name for n in a.neurons]


def test_calibration_error_is_zero_in_the_model_dtype(stories):
    model, tok = stories
    ids, _ = text_ids(model, tok, None, None, 64)
    targets = discover_targets(model, "down_proj")
    assert cert.calibration_error(model, targets, ids, FindConfig(k=3)) == 0.0  # no autocast: the same bits
    for ranking in ("per_token", "mean"):
        e = cert.calibration_error(model, targets, ids, FindConfig(k=3, ranking=ranking, stage1_dtype="bfloat16"))
        assert 0 < e < 5


@pytest.mark.parametrize("strategy", ["first", "linear", "bisect"])
def test_oracle_within(stories, strategy):
    """first/linear search only the certified length, and agree with the full search whenever its answer lies
    within it; bisect's answer must not depend on a prefix beyond it."""
    model, tok = stories
    ids, _ = text_ids(model, tok, None, None, 512)
    cfg = FindConfig(scope="down_proj", strategy=strategy, epsilon=0.5)
    targets = discover_targets(model, "down_proj")
    ranking = make_ranker(cfg).rank(model, targets, ids)
    with torch.no_grad():
        oracle = Stage2Oracle(PrefixNLL(model, ids, cfg), cfg, [cfg.epsilon])
        full = oracle.searches(ranking)[0]
        assert full.converged and full.n > 2
        assert oracle.within(ranking, full.n - 1) is None
        reach = max(full.curve) if strategy == "bisect" else full.n  # what the answer depends on
        got = oracle.within(ranking, reach)
        if strategy == "bisect" and reach > full.n:
            assert oracle.within(ranking, reach - 1) is None  # a probe past n counts for bisect
    assert got is not None and got[0].n == full.n


def test_step_bounds_the_search_on_its_own_grid(stories):
    """With step 4 a length of 6 searches n = 4 only (6 is not a candidate of the real search)."""
    model, tok = stories
    ids, _ = text_ids(model, tok, None, None, 512)
    cfg = FindConfig(scope="down_proj", step=4, epsilon=0.03)
    ranking = make_ranker(cfg).rank(model, discover_targets(model, "down_proj"), ids)
    with torch.no_grad():
        oracle = Stage2Oracle(PrefixNLL(model, ids, cfg), cfg, [cfg.epsilon])
        out = oracle.within(ranking, 6)
        assert out is not None and out[0].n == 4 and max(out[0].curve) == 4
        assert oracle.within(ranking, 3) is None  # no candidate within 3


def test_no_oracle_and_k_auto_are_not_certified(stories):
    model, tok = stories
    ids, _ = text_ids(model, tok, None, None, 64)
    targets = discover_targets(model, "down_proj")
    ranker = make_ranker(FindConfig(k=4, stage1_dtype="bfloat16"))
    exact = make_ranker(FindConfig(k=4)).rank(model, targets, ids)
    got = ranker.rank(model, targets, ids)  # no use_stage2: nothing known about the answer
    c = ranker.stats["stage1_certified"]
    assert not c["certified"] and ("oracle" in c["fallback"] or c["length"] == 0)
    assert torch.equal(got.channels, exact.channels) and torch.equal(got.scores, exact.scores)
    r = af.find_critical(model, tok, k="auto", max_k=8, stage1_dtype="bfloat16", epsilon=0.03, **KW)
    assert r.stats["stage1_certified"] == {"dtype": "bfloat16", "certified": False,
                                           "reason": "k='auto' is not certified (its own stopping rule)"}
    assert "bfloat16 ranking kept, not certified" in r.summary()



@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lowp_forwards_equal_autocast(stories, dtype):
    """Stage 1 on cast weight copies: autocast's scores bit for bit (the same casts, made once), weights restored."""
    model, tok = stories
    snap = weights_snapshot(model)
    ids, _ = text_ids(model, tok, None, None, 64)
    targets = discover_targets(model, "paper")
    with torch.no_grad():
        with autocast(model, dtype):
            ref = sensitivity_scores(model, targets, ids, k=3)
        with lowp_forwards(model, dtype):
            got = sensitivity_scores(model, targets, ids, k=3)
        with pytest.raises(KeyboardInterrupt), lowp_forwards(model, dtype):
            raise KeyboardInterrupt
    assert_bit_identical(model, snap)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
