"""The between-forwards callback: run once before every Stage 1 chunk and every Stage 2 evaluation forward, only
inside the block that set it, and restored afterwards (also when the block raises)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import ToyTokenizer, tiny_model

import achilles_fast as af
from achilles_fast.method.callbacks import between_forwards, calling_between_forwards
from achilles_fast.method.masking import BatchedMask
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.method.ranking import Ranking
from achilles_fast.method.stage1 import sensitivity_scores
from achilles_fast.models.registry import discover_targets

TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1, initializer_range=0.5)


@pytest.mark.parametrize("chunk_tokens", [10_000, 50, 17])
def test_called_before_every_stage1_chunk(model, chunk_tokens):
    ids = ToyTokenizer()(TEXT)["input_ids"][0][:23]  # [23]
    k, seen, stats = 7, Counter(), {}
    with calling_between_forwards(seen):
        sensitivity_scores(model, discover_targets(model), ids, k=k, max_batch_tokens=chunk_tokens, stats=stats)
    kb = max(1, min(k, chunk_tokens // 23))
    assert seen.calls == stats["stage1_forwards"] == 1 + math.ceil(k / kb)  # the clean forward + the noisy chunks


@pytest.mark.parametrize("max_batch_tokens", [8192, 40])
def test_called_before_every_stage2_forward(model, max_batch_tokens):
    ids = ToyTokenizer()(TEXT)["input_ids"][0][:40].view(2, 20)  # [W=2, T=20]
    targets = discover_targets(model)
    order = torch.randperm(sum(t.num_channels for t in targets), generator=torch.Generator().manual_seed(0))[:8]
    ranking = Ranking(targets, order, torch.zeros(order.numel()))
    seen = Counter()
    with torch.no_grad(), calling_between_forwards(seen):
        ev = NLLEvaluator(model, ids, max_batch_tokens=max_batch_tokens, fused=False)
        with BatchedMask(ranking, 8) as bm:
            ev.nll_prefixes(bm, [1, 2, 4, 8])
    per_batch = max(1, max(20, max_batch_tokens) // 20)
    assert seen.calls == ev.forwards >= math.ceil(4 * 2 / per_batch)  # CPU: + the check of a shared forward's size


def test_find_critical_calls_it_in_both_stages(model):
    seen = Counter()
    with calling_between_forwards(seen):
        r = af.find_critical(model, ToyTokenizer(), TEXT, k=7, max_batch_tokens=64, epsilon=0.5, max_neurons=8,
                             progress=False)
    assert seen.calls >= r.stats["stage1_forwards"] + r.stats["stage2_forwards"] > r.stats["stage1_forwards"]


def test_only_inside_its_block_and_restored():
    outer, inner = Counter(), Counter()
    between_forwards()  # none set: nothing runs
    with calling_between_forwards(outer):
        between_forwards()
        with pytest.raises(RuntimeError):
            with calling_between_forwards(inner):
                between_forwards()
                raise RuntimeError("a forward that failed")
        between_forwards()  # the outer one is back after the inner block raised
        with calling_between_forwards(None):
            between_forwards()
    between_forwards()
    assert (outer.calls, inner.calls) == (2, 1)
