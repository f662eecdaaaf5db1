"""The MKL-packed LM head of NLLEvaluator (CPU float32): made after PACK_HEAD_AFTER calls of one shape, never
changing a value (checked bit for bit against token_nll at its first use), dropped when the head is edited in place,
refused over the memory budget, without MKL and under use_kernels(False); the weights untouched."""
from __future__ import annotations

import pytest
import torch

from achilles_fast import ops
from achilles_fast.method import perplexity
from achilles_fast.method.config import FindConfig
from achilles_fast.method.masking import BatchedMask
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.method.ranking import Ranking
from achilles_fast.method.stage2 import search_ranking
from achilles_fast.models.registry import discover_targets
from conftest import assert_bit_identical, weights_snapshot

from models.test_families import _build

pytestmark = pytest.mark.skipif(not ops.mkl_packing_available(), reason="this torch has no MKL packed GEMM")

IDS = torch.tensor([(5 * i + 2) % 97 for i in range(20)])  # [T]


@pytest.fixture(scope="module")
def model():
    return _build("llama")


def _ranking(model, n: int = 12) -> Ranking:
    targets = discover_targets(model, "down_proj")
    total = sum(t.num_channels for t in targets)
    return Ranking(list(targets), torch.randperm(total, generator=torch.Generator().manual_seed(3))[:n], torch.zeros(n))


def _curve(ev: NLLEvaluator, ranking: Ranking, calls: int) -> list:
    with BatchedMask(ranking, len(ranking)) as bm:
        return [ev.nll_prefixes(bm, [1 + i % len(ranking)])[0] for i in range(calls)]


def _plain(model) -> NLLEvaluator:
    ev = NLLEvaluator(model, IDS)
    ev.head_packing = "off (the test's plain evaluator)"
    return ev


def test_packed_after_some_calls_and_values_unchanged(model):
    ranking = _ranking(model)
    snap = weights_snapshot(model)
    calls = NLLEvaluator.PACK_HEAD_AFTER + 6
    ev = NLLEvaluator(model, IDS)
    assert ev.fused and ev.head_stats() == {"path": "chunked"}
    got = _curve(ev, ranking, calls)
    assert got == _curve(_plain(model), ranking, calls)  # bit for bit
    st = ev.head_stats()
    assert st["path"] == "packed" and st["packed_bytes"] == ev._head.weight.numel() * 4 and "not_packed" not in st
    assert_bit_identical(model, snap)


def test_a_head_edited_in_place_is_not_read_from_its_stale_packing(model):
    ranking = _ranking(model)
    ev = NLLEvaluator(model, IDS)
    _curve(ev, ranking, NLLEvaluator.PACK_HEAD_AFTER + 2)
    assert ev.head_stats()["path"] == "packed"
    w = ev._head.weight
    keep, clean = w.detach().clone(), ev.nll()
    try:
        with torch.no_grad():
            w[: w.shape[0] // 2].mul_(0.5)
        edited = ev.nll()
        assert edited == _plain(model).nll() and edited != clean
        assert ev.head_stats()["path"] == "chunked"  # dropped; packed again after PACK_HEAD_AFTER calls
    finally:
        with torch.no_grad():
            w.copy_(keep)
    assert ev.nll() == _plain(model).nll()


def test_a_packing_that_rounds_otherwise_is_never_used(model, monkeypatch):
    ranking = _ranking(model)
    real = ops.token_nll_packed
    monkeypatch.setattr(ops, "token_nll_packed", lambda h, p, t: real(h, p, t) + 1e-6)
    ev = NLLEvaluator(model, IDS)
    calls = NLLEvaluator.PACK_HEAD_AFTER + 4
    assert _curve(ev, ranking, calls) == _curve(_plain(model), ranking, calls)
    st = ev.head_stats()
    assert st["path"] == "chunked" and "rounds this head" in st["not_packed"]


@pytest.mark.parametrize("why", ["budget", "no_mkl", "kernels_off"])
def test_not_packed_over_budget_without_mkl_or_kernels(model, monkeypatch, why):
    ranking = _ranking(model)
    if why == "budget":
        monkeypatch.setattr(perplexity, "auto_score_bytes", lambda device: 1024)
    elif why == "no_mkl":
        monkeypatch.setattr(ops, "mkl_packing_available", lambda: False)
    ev = NLLEvaluator(model, IDS)
    calls = NLLEvaluator.PACK_HEAD_AFTER + 3
    if why == "kernels_off":
        with ops.use_kernels(False):
            got = _curve(ev, ranking, calls)
    else:
        got = _curve(ev, ranking, calls)
    assert got == pytest.approx(_curve(_plain(model), ranking, calls), abs=1e-5)
    st = ev.head_stats()
    assert st["path"] == "chunked"
    reason = {"budget": "over the memory budget", "no_mkl": "no MKL packed GEMM", "kernels_off": None}[why]
    assert st.get("not_packed") is None if reason is None else reason in st["not_packed"]


def test_stage2_stats_say_how_the_head_ran(model):
    ranking = _ranking(model, 16)
    cfg = FindConfig(strategy="linear", batch_size=1, epsilon=1e6, max_neurons=len(ranking))
    r = search_ranking(model, ranking, IDS, cfg)
    assert r.stats["lm_head"]["path"] == "packed" and r.stats["fused_nll"]
