"""find_critical(..., epsilon=[...]): one Stage 1, one search curve, one verified result per epsilon, equal to
separate runs; rank_neurons + ranked= reuse; PrefixNLL memoisation; bad epsilon lists."""
from __future__ import annotations

import pytest
import torch

from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

import achilles_fast as af
from achilles_fast.method.stage2 import PrefixNLL

TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."
EPS = [0.02, 0.05, 0.1]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1, initializer_range=0.5)  # large init: masking matters


def _same(a, b):
    assert a.names == b.names and a.curve == b.curve and a.converged == b.converged
    assert a.log10_ratio == b.log10_ratio and a.epsilon == b.epsilon
    assert a.stats.get("verify_log10_ratio") == b.stats.get("verify_log10_ratio")
    assert [n.name for n in a.top_ranked] == [n.name for n in b.top_ranked]


@pytest.mark.parametrize("strategy", ["bisect", "linear"])
def test_epsilon_list_equals_separate_runs(model, strategy):
    kw = dict(k=4, max_neurons=40, strategy=strategy, progress=False)
    snap = weights_snapshot(model)
    order = [0.05, 0.1, 0.02, 0.05]  # any order, a repeat allowed
    multi = af.find_critical(model, ToyTokenizer(), TEXT, epsilon=order, **kw)
    assert_bit_identical(model, snap)
    assert isinstance(multi, list) and len(multi) == 4
    alone_forwards = 0
    for eps, res in zip(order[:3], multi):
        alone = af.find_critical(model, ToyTokenizer(), TEXT, epsilon=eps, **kw)
        alone_forwards += alone.stats["stage2_forwards"]
        _same(res, alone)
        assert res.params["epsilon"] == eps
    _same(multi[3], multi[0])
    assert len({len(r.neurons) for r in multi}) > 1, "the epsilons should give different sets here"
    # one Stage 1: every result reports the same Stage 1 statistics, and the later searches reuse evaluations
    assert len({r.stats["stage1_forwards"] for r in multi}) == 1
    assert sum(r.stats.get("stage2_reused", 0) for r in multi) > 0
    assert sum(r.stats["stage2_forwards"] for r in multi[:3]) < alone_forwards


def test_single_epsilon_returns_a_result(model):
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=3, epsilon=0.05, max_neurons=20, progress=False)
    assert isinstance(r, af.CriticalResult)
    one = af.find_critical(model, ToyTokenizer(), TEXT, k=3, epsilon=[0.05], max_neurons=20, progress=False)
    assert isinstance(one, list) and len(one) == 1
    _same(one[0], r)


@pytest.mark.parametrize("eps,match", [([], "empty"), ([0.5, 0.0], "epsilon"), ([1.0, -1], "epsilon"),
                                       ([float("inf")], "epsilon"), (["a"], "epsilon"), ((float("nan"),), "epsilon")])
def test_bad_epsilon_lists(model, eps, match):
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match=match):
        af.find_critical(model, ToyTokenizer(), TEXT, k=2, epsilon=eps, progress=False)
    assert_bit_identical(model, snap)


def test_rank_neurons_and_ranked_reuse(model):
    kw = dict(k=4, max_neurons=40, progress=False)
    r = af.rank_neurons(model, ToyTokenizer(), TEXT, **kw)
    assert isinstance(r, af.Ranking) and len(r) == 40 and "stage1" in r.info["timings"]
    direct = af.find_critical(model, ToyTokenizer(), TEXT, epsilon=0.05, **kw)
    reused = af.find_critical(model, ToyTokenizer(), TEXT, epsilon=0.05, ranked=r, **kw)
    _same(reused, direct)
    assert reused.stats["ranking_given"] and reused.timings["stage1"] == r.info["timings"]["stage1"]
    # a shorter max_neurons searches the head of the longer ranking, exactly as ranking with that top would
    short = af.find_critical(model, ToyTokenizer(), TEXT, epsilon=0.05, ranked=r, **dict(kw, max_neurons=10))
    _same(short, af.find_critical(model, ToyTokenizer(), TEXT, epsilon=0.05, **dict(kw, max_neurons=10)))


def test_ranking_head_is_the_ranking_of_a_smaller_top(model):
    for mode in ("per_token", "max", "mean"):
        long = af.rank_neurons(model, ToyTokenizer(), TEXT, k=3, ranking=mode, max_neurons=60, progress=False)
        short = af.rank_neurons(model, ToyTokenizer(), TEXT, k=3, ranking=mode, max_neurons=7, progress=False)
        assert torch.equal(long.head(7).channels, short.channels)
        assert torch.equal(long.head(7).scores, short.scores)


def test_ranked_from_another_model_is_refused(model):
    other = tiny_model("llama", seed=5, initializer_range=0.5)
    r = af.rank_neurons(other, ToyTokenizer(), TEXT, k=2, progress=False)
    with pytest.raises(ValueError, match="another model"):
        af.find_critical(model, ToyTokenizer(), TEXT, ranked=r, progress=False)
    r_all = af.rank_neurons(model, ToyTokenizer(), TEXT, k=2, scope="all", progress=False)
    with pytest.raises(ValueError, match="scope"):
        af.find_critical(model, ToyTokenizer(), TEXT, ranked=r_all, progress=False)


def test_prefix_nll_memo_counts_each_set_once(model):
    from achilles_fast.method.masking import BatchedMask
    from achilles_fast.method.perplexity import NLLEvaluator
    r = af.rank_neurons(model, ToyTokenizer(), TEXT, k=2, max_neurons=30, progress=False)
    ids = torch.tensor([b % 97 for b in TEXT.encode()])
    pn = PrefixNLL(model, ids)
    with torch.no_grad(), BatchedMask(r, 30) as bm:
        a = pn.nll_prefixes(bm, r, [3, 5, 3])
        f = pn.ev.forwards
        b = pn.nll_prefixes(bm, r, [5, 3])
        assert pn.ev.forwards == f and pn.reused == 3 and b == [a[1], a[0]]
        ref = NLLEvaluator(model, ids).nll_prefixes(bm, [3, 5])
    assert a[:2] == ref  # memoised values are the evaluator's own
    # a permuted head is the same set: answered from memory
    perm = af.Ranking(r.targets, torch.cat([r.channels[:5].flip(0), r.channels[5:]]), r.scores)
    with torch.no_grad(), BatchedMask(perm, 30) as bm2:
        assert pn.nll_prefixes(bm2, perm, [5]) == [a[1]]
