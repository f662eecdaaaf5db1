"""Core method on tiny random models: scores, ranking, masking, Stage 2 search, restore, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

import achilles_fast as af
from achilles_fast.greedy import greedy_search
from achilles_fast.masking import BatchedMask, WeightMask, masked
from achilles_fast.neurons import Neuron, NeuronIndex
from achilles_fast.ops.reference import philox_normal
from achilles_fast.ranking import rank_channels
from achilles_fast.registry import UnsupportedModelError, discover_targets
from achilles_fast.result import CriticalResult
from achilles_fast.sensitivity import sensitivity_scores

from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."


@pytest.fixture(params=["llama", "qwen2"])
def model(request):
    return tiny_model(request.param, seed=1, initializer_range=0.5)  # large init: masking matters


def _hand_scores(model, ids, k, alpha, seed):
    """Straightforward reference: one forward per sample, outputs captured, mean |diff| by hand."""
    targets = discover_targets(model)
    outs = {}
    hooks = [t.module.register_forward_hook(lambda m, a, o, n=t.name: outs.__setitem__(n, o[0].clone()))
             for t in targets]
    try:
        emb = model.get_input_embeddings()(ids.unsqueeze(0))[0]  # [T, H]
        T, H = emb.shape
        with torch.no_grad():
            model(inputs_embeds=emb.unsqueeze(0))
            clean = dict(outs)
            acc = {t.name: torch.zeros_like(clean[t.name]) for t in targets}
            for s in range(k):
                idx = torch.arange(T * H, dtype=torch.int64) + s * T * H
                eps = philox_normal(seed, idx).view(T, H)
                model(inputs_embeds=(emb + alpha * eps).unsqueeze(0))
                for t in targets:
                    acc[t.name] += (outs[t.name] - clean[t.name]).abs()
    finally:
        for h in hooks:
            h.remove()
    return [acc[t.name] / k for t in targets]


@pytest.mark.parametrize("chunk_tokens", [10_000, 50, 17])
def test_scores_match_hand_reference(model, chunk_tokens):
    tok = ToyTokenizer()
    ids = tok(TEXT)["input_ids"][0][:23]
    ref = _hand_scores(model, ids, k=7, alpha=5.0, seed=3)
    got = sensitivity_scores(model, discover_targets(model), ids, k=7, alpha=5.0, seed=3,
                             max_batch_tokens=chunk_tokens)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # summed-over-positions variant
    got_sum = sensitivity_scores(model, discover_targets(model), ids, k=7, alpha=5.0, seed=3, per_position=False)
    for g, r in zip(got_sum, ref):
        torch.testing.assert_close(g, r.sum(0), rtol=1e-5, atol=1e-5)


def test_noise_statistics():
    x = philox_normal(1234, torch.arange(200_000, dtype=torch.int64))
    assert abs(x.mean().item()) < 0.01
    assert abs(x.std().item() - 1.0) < 0.01
    a = philox_normal(7, torch.arange(0, 50_000, dtype=torch.int64))
    b = philox_normal(7, torch.arange(50_000, 100_000, dtype=torch.int64))
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.02
    assert torch.equal(philox_normal(7, torch.arange(100)), philox_normal(7, torch.arange(100)))
    assert not torch.equal(philox_normal(7, torch.arange(100)), philox_normal(8, torch.arange(100)))


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
    from achilles_fast.ranking import PositionMax
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


def test_masking_zeroes_exactly_named_channels(model):
    targets = discover_targets(model)
    names = [f"{targets[0].name}:3", f"{targets[-1].name}:0", f"{targets[-1].name}:31"]
    ids = ToyTokenizer()(TEXT)["input_ids"]
    outs = {}
    hooks = [t.module.register_forward_hook(lambda m, a, o, n=t.name: outs.__setitem__(n, o.clone()))
             for t in targets]
    snap = weights_snapshot(model)
    with torch.no_grad():
        with masked(model, names) as resolved:
            assert [n.name for n in resolved] == names
            model(input_ids=ids)
            o0, oL = outs[targets[0].name], outs[targets[-1].name]
            assert torch.all(o0[..., 3] == 0) and torch.all(oL[..., 0] == 0) and torch.all(oL[..., 31] == 0)
            others = torch.ones(o0.shape[-1], dtype=torch.bool)
            others[3] = False
            assert torch.all(o0[..., others].abs().sum(-1) > 0)
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    assert_bit_identical(model, snap)


def test_batched_mask_equals_weight_mask(model):
    targets = discover_targets(model)
    idx = NeuronIndex(targets)
    sets = [[idx.neuron(0)], [idx.neuron(5), idx.neuron(40)], []]
    ids = ToyTokenizer()(TEXT)["input_ids"]
    with torch.no_grad():
        with BatchedMask(targets) as bm:
            bm.set(sets)
            batched = model(input_ids=ids.expand(3, -1)).logits
        for b, s in enumerate(sets):
            with WeightMask(targets).apply(s):
                single = model(input_ids=ids).logits[0]
            torch.testing.assert_close(batched[b], single, rtol=1e-5, atol=1e-5)


def test_determinism_and_seed(model):
    kw = dict(k=5, epsilon=0.05, max_neurons=20, progress=False)
    a = af.find_critical(model, ToyTokenizer(), TEXT, seed=0, **kw)
    b = af.find_critical(model, ToyTokenizer(), TEXT, seed=0, **kw)
    c = af.find_critical(model, ToyTokenizer(), TEXT, seed=1, **kw)
    assert [n.name for n in a.top_ranked] == [n.name for n in b.top_ranked]
    assert [n.score for n in a.top_ranked] == [n.score for n in b.top_ranked]
    assert a.curve == b.curve
    assert [n.score for n in a.top_ranked] != [n.score for n in c.top_ranked]


class _FakeEvaluator:
    """NLL as a function of the number of masked neurons (no model)."""

    def __init__(self, fn):
        self.fn = fn
        self.forwards = 0

    def nll_masked(self, bmask, sets):
        self.forwards += 1
        return [self.fn(len(s)) for s in sets]


class _NoMask:
    def set(self, _):
        pass

    def clear(self):
        pass


@pytest.mark.parametrize("crossing", [1, 2, 37, 64, 65, 999])
@pytest.mark.parametrize("step", [1, 3])
def test_linear_and_bisect_agree_on_monotone_curves(crossing, step):
    ranked = [Neuron("m", i) for i in range(1000)]
    fn = lambda n: 1.0 + 3.0 * math.log(10) * (n >= crossing) + 1e-4 * n  # noqa: E731
    out = {}
    for strategy in ("linear", "bisect"):
        ev = _FakeEvaluator(fn)
        out[strategy] = greedy_search(ev, _NoMask(), ranked, 1.0, epsilon=1.0, step=step, max_neurons=1000,
                                      strategy=strategy, batch_size=8)
    lin, bis = out["linear"], out["bisect"]
    expect = min(((crossing + step - 1) // step) * step, 1000)
    assert lin.converged and bis.converged
    assert lin.n == bis.n == expect
    assert bis.verified
    assert all(n % step == 0 or n == 1000 for n in lin.curve)
    if crossing > 100:
        assert bis.forwards < lin.forwards


def test_not_converged_respects_max_neurons():
    ranked = [Neuron("m", i) for i in range(100)]
    ev = _FakeEvaluator(lambda n: 1.0 + 0.001 * n)
    out = greedy_search(ev, _NoMask(), ranked, 1.0, epsilon=1.0, step=1, max_neurons=30, strategy="linear",
                        batch_size=4)
    assert not out.converged and out.n == 0 and max(out.curve) == 30


def test_find_critical_end_to_end_and_json(model, tmp_path):
    snap = weights_snapshot(model)
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=6, epsilon=0.02, max_neurons=64, progress=False,
                         strategy="linear", batch_size=3)
    assert_bit_identical(model, snap)
    assert r.converged and 1 <= len(r.neurons) <= 64
    assert r.curve[-1][0] >= len(r.neurons)
    assert [n.name for n in r.neurons] == [n.name for n in r.top_ranked[:len(r.neurons)]]
    assert r.log10_ratio >= 0.02
    assert abs(r.stats["verify_log10_ratio"] - r.log10_ratio) < 1e-4
    p = tmp_path / "r.json"
    r.to_json(str(p))
    back = CriticalResult.load(str(p))
    assert back.names == r.names and back.curve == r.curve
    d = json.loads(p.read_text())
    for key in ("neurons", "curve", "clean_ppl", "log10_ratio", "params", "timings", "versions", "converged"):
        assert key in d
    # same set through the linear strategy with a different batch size
    r2 = af.find_critical(model, ToyTokenizer(), TEXT, k=6, epsilon=0.02, max_neurons=64, progress=False,
                          strategy="bisect", batch_size=5)
    assert r2.names == r.names or not _monotone(r.curve)


def _monotone(curve):
    ys = [y for _, y in curve]
    return all(a <= b for a, b in zip(ys, ys[1:]))


def test_log_space_extremes():
    r = CriticalResult(model="m", neurons=[], converged=True, epsilon=1.0, clean_nll=2.0, final_nll=2.0 + 60 * math.log(10),
                       log10_ratio=60.0, curve=[[1, 60.0]], params={}, timings={}, stats={}, versions={})
    d = json.loads(r.to_json())  # no inf/nan anywhere
    assert d["log10_final_ppl"] == pytest.approx(60 + 2 / math.log(10))
    assert "1e6" in r.summary()


# ---- exact restore ----------------------------------------------------------------------------------

class _Boom(Exception):
    pass


def _raise_on_call(module, n, exc):
    calls = {"n": 0}

    def hook(m, a, o):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("exc", [_Boom("mid-stage"), KeyboardInterrupt()])
@pytest.mark.parametrize("when", [1, 2, 4, 6])  # clean pass, noisy pass, Stage 2 pass, verification pass
def test_exact_restore_after_exception(exc, when):
    model = tiny_model("llama", seed=2)
    targets = discover_targets(model)
    snap = weights_snapshot(model)
    model.train()
    h = _raise_on_call(targets[1].module, when, exc)
    try:
        with pytest.raises(type(exc)):
            af.find_critical(model, ToyTokenizer(), TEXT, k=4, max_batch_tokens=2 * 87, epsilon=100.0,
                             max_neurons=3, strategy="linear", batch_size=1, progress=False)
    finally:
        h.remove()
    assert_bit_identical(model, snap)
    assert model.training, "training mode restored"
    assert all(not t.module._forward_hooks for t in targets), "no hook left behind"


def test_exact_restore_when_masked_block_raises():
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    t = discover_targets(model)
    with pytest.raises(KeyboardInterrupt):
        with masked(model, [f"{t[0].name}:1", f"{t[2].name}:7"]):
            assert model.model.layers[0].mlp.down_proj.weight[1].abs().sum() == 0
            raise KeyboardInterrupt
    assert_bit_identical(model, snap)


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(k=0), "k"), (dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(epsilon=0.0), "epsilon"),
    (dict(scope="attn"), "scope"), (dict(ranking="median"), "ranking"), (dict(strategy="magic"), "strategy"),
    (dict(step=0), "step"), (dict(max_neurons=0), "max_neurons"),
])
def test_bad_params(kw, match):
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match=match):
        af.find_critical(model, ToyTokenizer(), TEXT, progress=False, **kw)
    assert_bit_identical(model, snap)


def test_bad_texts():
    model = tiny_model("llama")
    tok = ToyTokenizer()
    with pytest.raises(ValueError, match="empty"):
        af.find_critical(model, tok, "   ", progress=False)
    with pytest.raises(ValueError, match="token"):
        af.find_critical(model, tok, "a", progress=False)
    with pytest.warns(UserWarning, match="unstable"):
        af.find_critical(model, tok, "abcdef", k=2, max_neurons=2, progress=False)


def test_unsupported_model():
    model = tiny_model("llama")
    model.config.model_type = "not_a_family"
    with pytest.raises(UnsupportedModelError, match="registry"):
        af.find_critical(model, ToyTokenizer(), TEXT, progress=False)


def test_unknown_neuron_names():
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    good = f"{discover_targets(model)[0].name}:1"
    for bad in ("model.layers.99.mlp.down_proj:1", f"{discover_targets(model)[0].name}:999", "nonsense"):
        with pytest.raises((KeyError, ValueError)):
            with masked(model, [good, bad]):
                pass
        assert_bit_identical(model, snap)


def test_scope_all_scans_every_component():
    model = tiny_model("llama")
    kinds = {t.kind for t in discover_targets(model, "all")}
    assert {"attn.q_proj", "attn.o_proj", "mlp.down_proj", "mlp.up_proj", "norm.input"} <= kinds
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=3, epsilon=0.02, max_neurons=16, scope="all",
                         progress=False)
    assert r.top_ranked and len({n.kind for n in r.top_ranked}) >= 1


def test_mean_ranking_scores_are_means_over_positions(model):
    kw = dict(k=4, epsilon=0.02, max_neurons=8, progress=False)
    ids = ToyTokenizer()(TEXT)["input_ids"][0]
    ref = _hand_scores(model, ids, k=4, alpha=5.0, seed=0)
    r = af.find_critical(model, ToyTokenizer(), TEXT, ranking="mean", **kw)
    index = NeuronIndex(discover_targets(model))
    flat = torch.cat([s.mean(0) for s in ref])
    for n in r.top_ranked:
        assert n.score == pytest.approx(float(flat[index.flat_id(Neuron(n.module, n.channel))]), rel=1e-4)


def test_stage1_autocast_bf16_close_to_fp32(model):
    kw = dict(k=4, epsilon=0.02, max_neurons=16, progress=False)
    a = af.find_critical(model, ToyTokenizer(), TEXT, **kw)
    b = af.find_critical(model, ToyTokenizer(), TEXT, stage1_dtype="bfloat16", **kw)
    assert b.params["stage1_dtype"] == "bfloat16"
    sa = {n.name: n.score for n in a.top_ranked}
    sb = {n.name: n.score for n in b.top_ranked}
    common = set(sa) & set(sb)
    assert len(common) >= len(sa) // 2
    for name in common:
        assert sb[name] == pytest.approx(sa[name], rel=0.1)
    assert b.clean_nll == a.clean_nll  # Stage 2 untouched
    with pytest.raises(ValueError, match="dtype"):
        af.find_critical(model, ToyTokenizer(), TEXT, stage1_dtype="int8", **kw)
