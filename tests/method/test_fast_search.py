"""Fast path == the paper's procedure; streamed Stage 1 memory does not grow with K; forward-pass budgets."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import achilles_fast as af
from achilles_fast import ops

from conftest import ToyTokenizer, tiny_model

from achilles_fast.bench.paper_baseline import paper_find_critical


@pytest.mark.parametrize("epsilon", [0.3, 1.0])
def test_same_set_as_paper_baseline_stories(stories, epsilon):
    model, tok = stories
    base = paper_find_critical(model, tok, k=12, epsilon=epsilon)
    assert base["converged"]
    for strategy in ("linear", "bisect"):
        r = af.find_critical(model, tok, k=12, epsilon=epsilon, strategy=strategy, progress=False)
        assert r.names == base["neurons"], strategy
        assert [n.name for n in r.top_ranked] == base["ranking_head"][:len(r.top_ranked)]
        assert r.log10_ratio == pytest.approx(base["log10_ratio"], abs=1e-4)


@pytest.mark.slow
def test_same_set_as_paper_baseline_smollm2(smollm2):
    model, tok = smollm2
    base = paper_find_critical(model, tok, k=100)
    r = af.find_critical(model, tok, k=100, progress=False)
    assert base["converged"] and r.names == base["neurons"]
    assert [n.name for n in r.top_ranked[:20]] == base["ranking_head"][:20]


def test_bisect_forward_budget(stories):
    """bisect uses <= ceil(log2 n) + 2 evaluation rounds (batch wide enough for the probes; on CPU the evaluator
    decides which candidates of a round share a forward)."""
    model, tok = stories
    r = af.find_critical(model, tok, k=8, epsilon=1.0, strategy="bisect", batch_size=16,
                         max_batch_tokens=1 << 20, progress=False)
    n = len(r.neurons)
    assert r.converged and n > 1
    assert r.stats["stage2_calls"] <= math.ceil(math.log2(n)) + 2, r.stats


def test_stage1_chunking_is_bounded_and_equivalent():
    """Chunks never exceed the token budget, and the scores do not depend on it."""
    model = tiny_model("llama", seed=3)
    seen = []
    orig = ops.noisy_embeds

    def spy(embeds, alpha, seed, k_start, k_count):
        seen.append(k_count * embeds.shape[0])
        return orig(embeds, alpha, seed, k_start, k_count)

    text = "streaming keeps memory flat " * 3
    T = len(text.encode())
    ops.noisy_embeds = spy
    try:
        small = af.find_critical(model, ToyTokenizer(), text, k=40, max_batch_tokens=3 * T, epsilon=0.01,
                                 max_neurons=8, progress=False)
    finally:
        ops.noisy_embeds = orig
    assert max(seen) <= 3 * T and sum(seen) == 40 * T
    big = af.find_critical(model, ToyTokenizer(), text, k=40, max_batch_tokens=10**6, epsilon=0.01,
                           max_neurons=8, progress=False)
    assert [n.name for n in small.top_ranked] == [n.name for n in big.top_ranked]
    for a, b in zip(small.top_ranked, big.top_ranked):
        assert a.score == pytest.approx(b.score, rel=1e-5)


_MEM_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import tiny_model
    from achilles_fast.models.registry import discover_targets
    from achilles_fast.method.stage1 import sensitivity_scores
    m = tiny_model("llama", hidden_size=128, intermediate_size=1024, num_hidden_layers=2, head_dim=32)
    ids = torch.randint(0, 97, (256,))
    sensitivity_scores(m, discover_targets(m), ids, k=2, max_batch_tokens=1024)   # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sensitivity_scores(m, discover_targets(m), ids, k=int(sys.argv[1]), max_batch_tokens=1024)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def test_peak_memory_independent_of_k(tmp_path):
    """Unchunked, K=400 needs ~400 MB of MLP activations at once (storing all outputs ~100 MB); streamed it stays flat."""
    script = tmp_path / "mem.py"
    script.write_text(_MEM_SCRIPT.format(tests=str(Path(__file__).parents[1])))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def peak(k):
        p = subprocess.run([sys.executable, str(script), str(k)], capture_output=True, text=True, env=env,
                           timeout=600)
        assert p.returncode == 0, p.stderr
        return float(p.stdout.strip().splitlines()[-1])

    small, large = peak(8), peak(400)
    assert large - small < 60, (small, large)


def test_score_groups_partition():
    """Groups keep scan order, cover every target once, and fit the budget (an oversized target stands alone)."""
    from types import SimpleNamespace

    from achilles_fast.method.stage1 import score_groups
    ts = [SimpleNamespace(num_channels=c) for c in (8, 8, 40, 8, 8, 8)]
    per = lambda c: c * (10 * 4 + 10 * 4)  # noqa: E731  T=10, fp32 clean + fp32 per-position accumulator
    groups = score_groups(ts, 10, True, 4, budget_bytes=2 * per(8))
    assert [i for g in groups for i in g] == list(range(6))
    assert groups == [[0, 1], [2], [3, 4], [5]]
    for g in groups:
        assert len(g) == 1 or sum(per(ts[i].num_channels) for i in g) <= 2 * per(8)
    assert score_groups(ts, 10, True, 4, budget_bytes=10**9) == [list(range(6))]
    # position-summed accumulators ([C]) are smaller: more targets per group
    assert len(score_groups(ts, 10, False, 4, budget_bytes=2 * per(8))) < len(groups)


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe"])
def test_grouped_stage1_same_scores(model_type):
    """A score-memory budget that splits the targets into groups gives bit-identical scores and the same result."""
    import torch
    from transformers import CONFIG_MAPPING

    from achilles_fast.models.registry import discover_targets
    from achilles_fast.method.stage1 import plan_groups, sensitivity_scores
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no {model_type!r} model in this version")
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32) if "moe" in model_type else {}
    model = tiny_model(model_type, seed=5, pad_token_id=0, initializer_range=0.2, **extra)
    targets = discover_targets(model)
    ids = torch.randint(0, 97, (23,), generator=torch.Generator().manual_seed(1))
    per_target_mb = targets[0].num_channels * 23 * 8 / 2**20
    budget = 2.5 * per_target_mb  # two targets per group
    groups = plan_groups(model, targets, 23, True, budget)
    assert len(groups) == math.ceil(len(targets) / 2) >= 2
    st1, st2 = {}, {}
    one = sensitivity_scores(model, targets, ids, k=7, max_batch_tokens=3 * 23, stats=st1)
    grouped = sensitivity_scores(model, targets, ids, k=7, max_batch_tokens=3 * 23, max_score_mb=budget, stats=st2)
    assert st1["stage1_groups"] == 1 and st2["stage1_groups"] == len(groups)
    assert st2["stage1_forwards"] == len(groups) * st1["stage1_forwards"]
    for a, b in zip(one, grouped):
        assert torch.equal(a, b)
    from achilles_fast.method.ranking import PositionMax
    reduced = sensitivity_scores(model, targets, ids, k=7, max_batch_tokens=3 * 23, max_score_mb=budget,
                                 reduce_positions=True)
    for a, r in zip(one, reduced):
        ref = PositionMax.of(a)
        assert isinstance(r, PositionMax) and torch.equal(r.values, ref.values) and torch.equal(r.pos, ref.pos)
    kw = dict(k=7, epsilon=0.05, max_neurons=6, progress=False)
    text = "grouped scoring tests!!"  # 23 tokens, as above
    r1 = af.find_critical(model, ToyTokenizer(), text, **kw)
    r2 = af.find_critical(model, ToyTokenizer(), text, max_score_mb=budget, **kw)
    assert r2.stats["stage1_groups"] == len(groups)
    assert r1.names == r2.names and r1.curve == r2.curve
    assert [n.score for n in r1.top_ranked] == [n.score for n in r2.top_ranked]
    with pytest.raises(ValueError, match="max_score_mb"):
        af.find_critical(model, ToyTokenizer(), "x y", max_score_mb=0, **kw)
