"""Incremental Stage 2 (issue 21): every prefix run from its first changed layer gives the full forward's curve, on
every registered family, strategy, batched and unbatched, scopes all and paper; fallbacks, exact restore, and the
low-precision stage2_dtype with its calibrated margin."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import achilles_fast as af
from achilles_fast.method import lowprec
from achilles_fast.method.config import FindConfig
from achilles_fast.method.incremental import PrefixCache
from achilles_fast.method.masking import BatchedMask
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.method.ranking import Ranking
from achilles_fast.method.stage2 import PrefixNLL, search_ranking
from achilles_fast.models import families, registry
from achilles_fast.models.layers import stack_rows, take_row
from achilles_fast.models.registry import discover_targets
from conftest import ToyTokenizer, assert_bit_identical, weights_snapshot

from models.test_families import FAMILIES, TEXT, _build  # the registry's tiny random models

UNREACHABLE = 1e6
IDS = torch.tensor([(7 * i + 3) % 97 for i in range(24)])  # [T]


def _ranking(targets, n: int = 24, seed: int = 0) -> Ranking:
    """``n`` random channels of ``targets`` (spread over every layer) in a random order."""
    total = sum(t.num_channels for t in targets)
    g = torch.Generator().manual_seed(seed)
    return Ranking(list(targets), torch.randperm(total, generator=g)[:n], torch.zeros(n))


def _ranked(model, scope: str, n: int = 32) -> Ranking:
    """The sensitivity ranking's head (``n`` channels, spread over the layers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.rank_neurons(model, ToyTokenizer(), TEXT, k=4, alpha=1.0, scope=scope, max_neurons=n,
                               progress=False)


def _epsilon(curve) -> float:
    """An epsilon first crossed half way along ``curve``: between the running maximum nearest its middle and the one
    before (a margin for batched rounding); a curve that never rises above 0: an unreachable epsilon."""
    records, top = [], 0.0
    for n, v in curve:
        if v > top:
            records.append((n, v))
            top = v
    if not records:
        return UNREACHABLE
    i = min(range(len(records)), key=lambda j: abs(records[j][0] - len(curve) // 2))
    return records[i][1] if i == 0 else (records[i - 1][1] + records[i][1]) / 2  # records: v > 0


def _search(model, ranking, strategy, batch_size, epsilon, **cfg):
    cfg = FindConfig(strategy=strategy, batch_size=batch_size, epsilon=epsilon, max_neurons=len(ranking), **cfg)
    return search_ranking(model, ranking, IDS, cfg)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param, _build(FAMILIES[request.param][0])


@pytest.mark.parametrize("scope", ["all", "paper"])
def test_curves_equal_full_forwards_on_every_family(family, scope, monkeypatch):
    """Every strategy, one candidate per call and four (CPU: shared forwards from the first prefix on): the incremental
    curve is the full forwards' curve and the curve of one prefix per full forward (bit-identical on CPU), with fewer
    layers run, and the weights untouched."""
    monkeypatch.setattr(NLLEvaluator, "CPU_SHARE_AFTER", 0)
    name, model = family
    ranking = _ranked(model, scope)
    assert len({ranking.neuron(i).layer for i in range(len(ranking))}) > 1
    snap = weights_snapshot(model)
    alone = _search(model, ranking, "linear", 1, UNREACHABLE, incremental=False).curve  # every prefix by itself
    eps = _epsilon(alone)
    alone = dict(alone)
    for strategy in ("first", "linear", "bisect"):
        for bs in (1, 4):
            a = _search(model, ranking, strategy, bs, eps)
            b = _search(model, ranking, strategy, bs, eps, incremental=False)
            inc = a.stats["incremental"]
            assert inc["incremental"] and "fallback" not in inc, inc
            assert inc["layers_per_eval"] < inc["n_layers"] == model.config.num_hidden_layers
            assert a.curve == b.curve, (strategy, bs)
            assert [n.name for n in a.neurons] == [n.name for n in b.neurons]
            # CPU: four candidates per call give each prefix the bits of its own forward
            assert all(v == alone[n] for n, v in a.curve), (strategy, bs)
            # bisect's probes may all miss the peak of a non-monotone curve
            assert a.converged or strategy == "bisect" or eps == UNREACHABLE
            if a.converged:
                assert a.stats["verify_log10_ratio"] == pytest.approx(a.log10_ratio, abs=1e-5)
    assert_bit_identical(model, snap)


def test_start_layer_is_the_lowest_changed_layer():
    """Prefixes of channels of the last layer only run that layer; a channel of layer 0 runs them all."""
    model = _build("llama")
    targets = discover_targets(model, "all")
    last = [t for t in targets if t.layer == 2]
    offset = sum(t.num_channels for t in targets[:targets.index(last[0])])
    ranking = Ranking(targets, torch.arange(offset, offset + 6), torch.zeros(6))
    ev = NLLEvaluator(model, IDS, incremental=True)
    with BatchedMask(ranking) as bm:
        ref = [NLLEvaluator(model, IDS).nll_prefixes(bm, [n])[0] for n in range(1, 7)]
        got = [ev.nll_prefixes(bm, [n])[0] for n in range(1, 7)]
        c = ev.cache
        assert c.start_layer(ranking, [3], [0]) == 2 and c.start_layer(ranking, [6], [0]) == 3  # same set: none
    assert got == ref
    # forwards: the first full (3 layers), its self-check from the middle (2), then 1 layer for each of 5 prefixes
    assert c.layers_run == 3 + 2 + 5 and c.forwards == 7
    lr0 = Ranking(targets, torch.tensor([offset, 5]), torch.zeros(2))  # channel 5: layer 0's q_proj
    assert c.start_layer(lr0, [2], [0]) == 0


def test_layerless_target_forces_a_full_forward():
    """A channel of a target outside the layer stack (lm_head) changes 'layer 0': every forward runs all layers."""
    model = _build("llama")
    targets = registry.linear_targets(model)
    assert targets[-1].layer is None
    head0 = sum(t.num_channels for t in targets[:-1])
    ranking = Ranking(targets, torch.tensor([head0 + 3, head0 + 5, 1]), torch.zeros(3))
    ev = NLLEvaluator(model, IDS, incremental=True)
    with BatchedMask(ranking) as bm:
        ref = [NLLEvaluator(model, IDS).nll_prefixes(bm, [n])[0] for n in (1, 2, 3)]
        got = [ev.nll_prefixes(bm, [n])[0] for n in (1, 2, 3)]
    assert got == ref
    assert ev.cache.start_layer(ranking, [1], [0]) == 0


def test_fused_nll_path_is_incremental():
    model = _build("llama")
    ranking = _ranking(discover_targets(model, "all"))
    pn = PrefixNLL(model, IDS, FindConfig())
    with BatchedMask(ranking) as bm:
        got = pn.nll_prefixes(bm, ranking, list(range(1, 9)))
        assert pn.ev.fused
        ref = [NLLEvaluator(model, IDS, fused=True).nll_prefixes(bm, [n])[0] for n in range(1, 9)]
    assert got == ref and pn.ev.cache.layers_run < 3 * pn.ev.cache.forwards


def test_fallbacks_have_a_reason(monkeypatch):
    """No registry entry, a family entry that says it cannot, a cache over the memory budget: full forwards, with
    the reason in stats; the values are the full forwards' values."""
    model = _build("llama")
    ranking = _ranking(discover_targets(model, "all"))
    cfg = dict(k=2, alpha=1.0, epsilon=0.05, max_neurons=8, scope="all", strategy="linear", progress=False)
    ref = af.find_critical(model, ToyTokenizer(), TEXT, incremental=False, **cfg)
    assert "incremental" not in ref.stats
    spec = families.get_family("llama")
    monkeypatch.setattr(spec, "incremental", "per-layer inputs (test)")
    r = af.find_critical(model, ToyTokenizer(), TEXT, **cfg)
    assert r.stats["incremental"]["fallback"] == "per-layer inputs (test)" and r.curve == ref.curve
    monkeypatch.setattr(spec, "incremental", None)
    assert "over the memory budget" in PrefixCache(model, 1, 24, 1, budget_bytes=1000).reason
    assert PrefixCache(model, 1, 24, 1, budget_bytes=10**9).active
    model.config.model_type = "my_fork"
    try:
        assert "no registry entry" in PrefixCache(model, 1, 24, 1).reason
    finally:
        model.config.model_type = "llama"
    ev = NLLEvaluator(model, IDS, incremental=True)
    ev.cache.reason = "forced (test)"
    with BatchedMask(ranking) as bm:
        assert ev.nll_prefixes(bm, [1, 2, 3]) == NLLEvaluator(model, IDS).nll_prefixes(bm, [1, 2, 3])
    assert ev.cache.stats()["fallback"] == "forced (test)" and ev.cache.stats()["layers_per_eval"] == 3


def test_exception_mid_evaluation_restores_everything():
    """A forward that raises inside a layer run from the cache: the layers get their own forward back, the cache is
    dropped, the weights are bit-identical, and the next evaluation is exact again."""
    model = _build("llama")
    snap = weights_snapshot(model)
    ranking = _ranking(discover_targets(model, "all"))
    ev = NLLEvaluator(model, IDS, incremental=True)
    layers = list(model.model.layers)
    with BatchedMask(ranking) as bm:
        ev.nll_prefixes(bm, [1])
        h = layers[2].mlp.register_forward_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            with pytest.raises(KeyboardInterrupt):
                ev.nll_prefixes(bm, [2])
        finally:
            h.remove()
        assert all("forward" not in layer.__dict__ for layer in layers)
        assert ev.cache.start_layer(ranking, [2], [0]) == 0 and ev.cache.nbytes() == 0
        got = [ev.nll_prefixes(bm, [n])[0] for n in (2, 3, 4)]
        assert got == [NLLEvaluator(model, IDS).nll_prefixes(bm, [n])[0] for n in (2, 3, 4)]
    assert_bit_identical(model, snap)


def test_layer_outputs_as_tuples_round_trip():
    """transformers 4 layers return tuples: a batch element's rows keep the structure, stacking rebuilds it."""
    x = torch.arange(24.).view(3, 2, 4)
    out = (x, None, [x * 2])
    rows = [take_row(out, b, 3) for b in (2, 0)]
    back = stack_rows(rows)
    assert isinstance(back, tuple) and back[1] is None and isinstance(back[2], list)
    assert torch.equal(back[0], x[[2, 0]]) and torch.equal(back[2][0], 2 * x[[2, 0]])
    assert rows[0][0].data_ptr() != x.data_ptr()  # cloned: the forward's tensors may be reused


# ---- stage2_dtype ----------------------------------------------------------------------------------------------------
def test_margin_calibration():
    lp = lowprec.LowPrecision.__new__(lowprec.LowPrecision)
    lp.errors, lp.exact_evaluations = [], 0
    assert math.isinf(lp.margin) and not lp.decides(5.0, 1.0)  # before calibration: everything exact
    for low, exact in [(0.10, 0.101), (0.2, 0.2), (0.4, 0.41)]:
        lp.calibrate(low, exact)
    assert lp.margin == pytest.approx(lowprec.SAFETY * 0.01)
    assert lp.decides(1.5, 1.0) and not lp.decides(1.03, 1.0) and not lp.decides(math.nan, 1.0)
    assert not lp.decides(0.1, None)
    lp.calibrate(0.5, 0.5)
    assert lp.margin == pytest.approx(lowprec.SAFETY * 0.01)
    lp.errors = [0.0] * 3
    assert lp.margin == lowprec.MIN_MARGIN


@pytest.mark.parametrize("strategy", ["first", "linear", "bisect"])
def test_stage2_dtype_same_answer_exact_near_epsilon(strategy):
    """bfloat16 prefix evaluations: the same critical set as float32; every curve value near epsilon (and the final
    one) is the float32 value; weights restored."""
    model = _build("llama")
    snap = weights_snapshot(model)
    ranking = _ranked(model, "all", 48)
    full = _search(model, ranking, "linear", 1, 1e6).curve
    eps = _epsilon(full)
    ref = _search(model, ranking, strategy, 1, eps)
    low = _search(model, ranking, strategy, 1, eps, stage2_dtype="bfloat16")
    assert_bit_identical(model, snap)
    st = low.stats["stage2_dtype"]
    assert st["dtype"] == "bfloat16" and st["margin"] >= lowprec.MIN_MARGIN and st["exact_reevaluations"] >= 3
    assert st["weight_copy_bytes"] > 0 and "weight_copies_skipped" not in st  # bf16 copies, not per-forward casts
    assert [n.name for n in low.neurons] == [n.name for n in ref.neurons] and low.log10_ratio == ref.log10_ratio
    exact = dict(full)
    for n, v in low.curve:
        if abs(v - eps) <= st["margin"] or n == len(low.neurons):
            assert v == exact[n], n
    assert any(v != exact[n] for n, v in low.curve), "nothing was evaluated in bfloat16"


def test_stage2_dtype_on_every_family(family):
    """bfloat16 prefixes with cast weight copies on every registered family: the float32 answer (its neurons and its
    exact final value), the copies made for the family's nn.Linear weights, the model's own Parameters untouched."""
    name, model = family
    ranking = _ranked(model, "all")
    snap = weights_snapshot(model)
    params = {k: p for k, p in model.named_parameters()}
    eps = _epsilon(_search(model, ranking, "linear", 1, UNREACHABLE).curve)
    ref = _search(model, ranking, "first", 1, eps)
    low = _search(model, ranking, "first", 1, eps, stage2_dtype="bfloat16")
    assert [n.name for n in low.neurons] == [n.name for n in ref.neurons], name
    assert low.log10_ratio == ref.log10_ratio, name
    has_linear = any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert (low.stats["stage2_dtype"]["weight_copy_bytes"] > 0) == has_linear, name
    assert_bit_identical(model, snap)
    assert all(p is params[k] for k, p in model.named_parameters()), name


def test_stage2_dtype_bad_values():
    with pytest.raises(ValueError, match="stage2_dtype"):
        FindConfig(stage2_dtype="int8")
    assert FindConfig(stage2_dtype="float32").stage2_dtype == "float32"


def test_stage2_dtype_exception_mid_evaluation_restores_weights():
    model = _build("llama")
    snap = weights_snapshot(model)
    layer = model.model.layers[1]
    calls = [0]

    def boom(*a):
        calls[0] += 1
        if calls[0] == 6:
            raise RuntimeError("boom")
    h = layer.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            af.find_critical(model, ToyTokenizer(), TEXT, k=2, max_neurons=8, epsilon=0.05, stage2_dtype="bfloat16",
                             progress=False)
    finally:
        h.remove()
    assert all("forward" not in m.__dict__ for m in model.model.layers)
    assert_bit_identical(model, snap)


def test_stories260k_paper_scope_curve_equals_full_forwards(stories):
    """The real 5-layer TinyStories Llama, scope paper (activations, norms, q/k/v/o, MLP), the default search: the
    incremental curve is bit-identical to the full forwards' and runs fewer layers."""
    model, tok = stories
    snap = weights_snapshot(model)
    kw = dict(k=4, scope="paper", max_tokens=128, max_neurons=200, progress=False)
    a = af.find_critical(model, tok, **kw)
    b = af.find_critical(model, tok, incremental=False, **kw)
    assert a.curve == b.curve and [n.name for n in a.neurons] == [n.name for n in b.neurons]
    inc = a.stats["incremental"]
    assert "fallback" not in inc and inc["layers_per_eval"] < inc["n_layers"] == 5 and inc["cache_bytes"] > 0
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "mistral"])
def test_sliding_window_layers(model_type):
    """Sliding-window attention narrower than the text (windows of 4 tokens, mixed with full layers where the family
    has both): the model's own forward builds each layer's mask, so the curve is still the full forwards'."""
    from conftest import tiny_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model(model_type, pad_token_id=0, initializer_range=0.2, sliding_window=4,
                           use_sliding_window=True, max_window_layers=1, sliding_window_pattern=2)
    ranking = _ranked(model, "all")
    a = _search(model, ranking, "linear", 1, UNREACHABLE)
    b = _search(model, ranking, "linear", 1, UNREACHABLE, incremental=False)
    assert a.curve == b.curve and "fallback" not in a.stats["incremental"]
    with torch.no_grad():  # the window matters here: a wide one changes the logits
        wide = tiny_model(model_type, pad_token_id=0, initializer_range=0.2, sliding_window=256,
                          use_sliding_window=True, max_window_layers=1, sliding_window_pattern=2)
        ids = IDS[None]
        assert not torch.allclose(model(input_ids=ids).logits, wide(input_ids=ids).logits)
