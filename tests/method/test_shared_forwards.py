"""CPU Stage 2 forwards shared by several prefixes (issue 21): each prefix gets the bits of its own forward, prefixes
share only when they run about the same layers, and a size whose shared forward rounds otherwise is never shared."""
from __future__ import annotations

import pytest
import torch

from achilles_fast.method.masking import BatchedMask
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.method.ranking import Ranking
from achilles_fast.models.batch_exact import SequenceExact
from achilles_fast.models.registry import discover_targets
from conftest import assert_bit_identical, weights_snapshot

from models.test_families import _build

IDS = torch.tensor([(7 * i + 3) % 97 for i in range(24)])  # [T]
NS = list(range(1, 11))


@pytest.fixture(autouse=True)
def share_at_once(monkeypatch):
    """Share from the first prefix (the default waits for ``CPU_SHARE_AFTER``; tested below)."""
    monkeypatch.setattr(NLLEvaluator, "CPU_SHARE_AFTER", 0)


def _ranking(model, layers, seed: int = 0) -> Ranking:
    """One random down_proj channel of each of ``layers`` (in that order)."""
    targets = discover_targets(model, "down_proj")
    g = torch.Generator().manual_seed(seed)
    offsets = [sum(t.num_channels for t in targets[:i]) for i in range(len(targets))]
    chans = [offsets[l] + int(torch.randint(targets[l].num_channels, (1,), generator=g)) for l in layers]
    while len(set(chans)) < len(chans):  # distinct channels
        return _ranking(model, layers, seed + 1)
    return Ranking(targets, torch.tensor(chans), torch.zeros(len(chans)))


def _alone(model, bm, ns):
    """Each prefix in a full forward of its own (a fresh evaluator per prefix)."""
    return [NLLEvaluator(model, IDS).nll_prefixes(bm, [n])[0] for n in ns]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "qwen2_moe"])
@pytest.mark.parametrize("incremental", [True, False])
def test_shared_forwards_equal_each_prefix_alone(model_type, incremental):
    model = _build(model_type)
    snap = weights_snapshot(model)
    ranking = _ranking(model, [0] * len(NS))  # all in layer 0: every prefix runs every layer, sharing pays
    ev = NLLEvaluator(model, IDS, incremental=incremental)
    with BatchedMask(ranking) as bm:
        got = ev.nll_prefixes(bm, NS[:4]) + ev.nll_prefixes(bm, NS[4:])  # checked, then used (or refused), 2 alone
        assert got == _alone(model, bm, NS)
    st = ev.batch_stats()
    assert st["sizes_exact"] == [4] or st.get("not_shared"), st  # shared, or refused with the reason
    if model_type == "llama":
        assert st["forwards"] >= 1 and st["sizes_exact"], st  # the tiny dense model shares exactly
    assert_bit_identical(model, snap)


def test_a_size_whose_shared_forward_rounds_otherwise_is_never_shared(monkeypatch):
    """Stand-in: batched Linear calls off by 1e-6. The first shared forward of each size fails its check, its values
    are its prefixes' own (each again alone from the shared forward's start layer, on the cache's reference below
    it), and that size is not shared again."""
    model = _build("llama")
    exact = SequenceExact.linear

    def off(self, x, weight, bias):
        out = exact(self, x, weight, bias)
        return out + 1e-6 if x.dim() == 3 and x.shape[0] > 1 else out

    monkeypatch.setattr(SequenceExact, "linear", off)
    ranking = _ranking(model, [0] * 4 + [2] * 10)
    ev = NLLEvaluator(model, IDS, incremental=True)
    calls = [[1], [2], [3], [4], [5, 6, 7, 8], [9, 10], [11, 12, 13, 14]]
    with BatchedMask(ranking) as bm:
        got = [v for ns in calls for v in ev.nll_prefixes(bm, ns)]
        assert got == _alone(model, bm, range(1, 15))
    st = ev.batch_stats()
    assert st["forwards"] == 0 and st["sizes_exact"] == [], st
    assert st["not_shared"] == "a shared forward of 4 prefixes did not reproduce their own forwards", st
    # 1: + the layer cache's self-check; 2-4; 5-8: shared + 4 alone (the check); 9, 10 (two: not a shared size);
    # 11-14: 4 alone (size 4 is known to fail)
    assert ev.forwards == 2 + 3 + (1 + 4) + 2 + 4
    # layers: 1 all 3 + its self-check from layer 1; 2-4 add layer-0 channels (3 each); 5-14 change layer 2 only
    assert ev.cache.layers_run == (3 + 2) + 3 * 3 + (1 + 4) + 2 + 4


def test_a_shared_forward_slower_than_its_prefixes_alone_is_not_repeated(monkeypatch):
    model = _build("llama")
    monkeypatch.setattr(NLLEvaluator, "CPU_SHARED_MAX_RATIO", 0.0)  # a forward would have to take no time
    ev = NLLEvaluator(model, IDS, incremental=False)
    with BatchedMask(_ranking(model, [0] * 12)) as bm:
        assert ev.nll_prefixes(bm, list(range(1, 13))) == _alone(model, bm, range(1, 13))
    st = ev.batch_stats()
    assert st["forwards"] == 0 and "a shared forward of 4 prefixes took" in st["not_shared"], st
    assert ev.forwards == 1 + 4 + 8  # checked once, then alone


def test_sharing_waits_for_share_after_prefixes(monkeypatch):
    model = _build("llama")
    monkeypatch.setattr(NLLEvaluator, "CPU_SHARE_AFTER", 6)
    ev = NLLEvaluator(model, IDS, incremental=False)
    with BatchedMask(_ranking(model, [0] * 16)) as bm:
        for i in range(1, 17, 4):
            ev.nll_prefixes(bm, list(range(i, i + 4)))
    assert ev.forwards == 4 + 4 + (1 + 4) + 1  # alone until 6 prefixes were evaluated, then checked, then shared
    assert ev.batch_stats()["forwards"] == 1


def test_prefixes_share_a_forward_only_when_they_run_about_the_same_layers():
    model = _build("llama")  # 3 layers
    ev = NLLEvaluator(model, IDS, incremental=True)
    jobs = [(b, 0) for b in range(5)]
    ns = [1, 2, 3, 4, 5]
    with BatchedMask(_ranking(model, [2] * 6)) as bm:  # last layer only
        # the first prefix: no cached reference (all 3 layers), so it runs alone; then 4 prefixes of 1 layer each
        assert ev._plan(bm, ns, jobs, 8) == [[(0, 0)], jobs[1:]]
        assert ev._plan(bm, ns, jobs, 2) == [[(0, 0)], jobs[1:3], jobs[3:]]  # the token budget: forwards of 2
        assert ev._plan(bm, ns[:4], jobs[:4], 8) == [[j] for j in jobs[:4]]  # 3 left: not a shared forward's size
    with BatchedMask(_ranking(model, [0, 2, 0, 2, 2, 2])) as bm:
        # 1: 3 layers, 2: 1 layer, 3: 3 layers, 4: 1, 5: 1: sharing 1-4 or 2-5 runs 4 x 3 layers, more than alone
        assert ev._plan(bm, ns, jobs, 8) == [[j] for j in jobs]
    ev_full = NLLEvaluator(model, IDS, incremental=False)  # full forwards: sharing always pays
    with BatchedMask(_ranking(model, [0, 2, 0, 2, 2, 2])) as bm:
        assert ev_full._plan(bm, ns, jobs, 8) == [jobs[:4], jobs[4:]]
        assert ev_full._plan(None, [0], [(0, 0)], 8) == [[(0, 0)]]


def test_low_precision_prefixes_share_forwards_and_report_it():
    """stage2_dtype: the low-precision evaluator plans and checks its own shared forwards; its stats say so."""
    from achilles_fast.method.config import FindConfig
    from achilles_fast.method.stage2 import search_ranking
    model = _build("llama")
    ranking = _ranking(model, [0] * 12)
    cfg = FindConfig(strategy="linear", epsilon=1e6, max_neurons=12, verify=False)
    low = search_ranking(model, ranking, IDS, cfg.replace(stage2_dtype="bfloat16"))
    exact = search_ranking(model, ranking, IDS, cfg.replace(batch_size=1))
    st = low.stats["stage2_dtype"]["shared_forwards"]
    assert st["sizes_exact"] == [4] or st.get("not_shared"), st
    assert low.stats["stage2_dtype"]["low_evaluations"] == 12
    assert [n for n, _ in low.curve] == [n for n, _ in exact.curve]


@pytest.mark.parametrize("incremental", [True, False])
def test_several_windows_share_exactly(incremental):
    """Two evaluation windows: forwards of 4 (prefix, window) jobs mix windows; every mean equals each prefix alone."""
    model = _build("llama")
    ids = torch.stack([IDS, IDS.flip(0)])  # [W=2, T]
    ranking = _ranking(model, [0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
    ev = NLLEvaluator(model, ids, incremental=incremental)
    with BatchedMask(ranking) as bm:
        got = ev.nll_prefixes(bm, NS[:4]) + ev.nll_prefixes(bm, NS[4:])
        assert got == [NLLEvaluator(model, ids).nll_prefixes(bm, [n])[0] for n in NS]
    assert ev.batch_stats()["sizes_exact"] == [4] or ev.batch_stats().get("not_shared")
