"""Baseline rankers: scores match independent computations, the same Stage 2 driver, exact restore."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import STORIES, ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

from achilles_fast.method.api import evaluate_mask
from achilles_fast.method.config import FindConfig
from achilles_fast.studies.baselines import METHODS, BaselineRanker, baseline_result, channel_scores, compare_rankers
from achilles_fast.models.registry import discover_targets
from achilles_fast.method.text import DEFAULT_TEXT, tokenize


def rank_neurons(model, targets, ids, method, seed=0, top=1000):
    """(ranked Neurons, scores) of a baseline ranker."""
    r = BaselineRanker(method, FindConfig(seed=seed, max_neurons=top)).rank(model, targets, ids)
    return r.neurons(), r.scores.tolist()


@pytest.fixture
def tiny():
    return tiny_model("llama", seed=1, initializer_range=0.3), ToyTokenizer()


def _ids(tok, n=40):
    return tokenize(tok, DEFAULT_TEXT, n)


def _record(model, targets, ids, pick):
    """One plain forward; {target name: pick(args, output)} seen by a hook on each target's module."""
    seen = {}
    hs = [t.module.register_forward_hook(lambda m, a, o, n=t.name: seen.__setitem__(n, pick(a, o).detach()))
          for t in targets]
    try:
        with torch.no_grad():
            model(input_ids=ids[None])
    finally:
        for h in hs:
            h.remove()
    return seen


def _reference_grads(model, targets, ids):
    """Independent d loss / d activation: retain_grad on the real outputs with parameter grads on."""
    import copy
    m = copy.deepcopy(model)
    tg = {t.name: t for t in discover_targets(m, "down_proj")}
    ys = {}

    def make(name):
        def hook(mod, args, out):
            out.retain_grad()
            ys[name] = out
        return hook

    hs = [tg[t.name].module.register_forward_hook(make(t.name)) for t in targets]
    logits = m(input_ids=ids[None]).logits
    loss = F.cross_entropy(logits[0, :-1], ids[1:])
    loss.backward()
    for h in hs:
        h.remove()
    return {n: (y.detach()[0], y.grad[0]) for n, y in ys.items()}


def test_gradient_and_taylor_match_autograd_reference(tiny):
    model, tok = tiny
    ids = _ids(tok)
    targets = discover_targets(model, "down_proj")
    ref = _reference_grads(model, targets, ids)
    g = channel_scores(model, targets, ids, "gradient")
    t = channel_scores(model, targets, ids, "taylor")
    for i, tg in enumerate(targets):
        y, gr = ref[tg.name]
        assert torch.allclose(g[i], gr.abs().mean(0), rtol=1e-4, atol=1e-7)
        assert torch.allclose(t[i], (y * gr).sum(0).abs(), rtol=1e-4, atol=1e-7)
        assert g[i].abs().sum() > 0


def test_activation_scores_are_mean_abs(tiny):
    model, tok = tiny
    ids = _ids(tok)
    targets = discover_targets(model, "down_proj")
    outs = _record(model, targets, ids, lambda a, o: o)
    got = channel_scores(model, targets, ids, "activation")
    for i, t in enumerate(targets):
        assert torch.allclose(got[i], outs[t.name][0].abs().mean(0), rtol=1e-5)


def test_superweight_finds_a_planted_super_weight(tiny):
    model, tok = tiny
    layer, i0, j0 = 1, 7, 11
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.up_proj.weight[j0] *= 200.0  # input spike into down_proj at channel j0
        mlp.down_proj.weight[i0, j0] = 5.0  # the super weight routes it to output channel i0
    ids = _ids(tok)
    ranked, scores = rank_neurons(model, discover_targets(model, "down_proj"), ids, "superweight", top=5)
    assert ranked[0].name == f"model.layers.{layer}.mlp.down_proj:{i0}"
    seen = {}
    h = mlp.down_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0].detach()))
    with torch.no_grad():
        model(input_ids=ids[None])
    h.remove()
    x = seen["x"][0].abs().amax(0)
    assert int(x.argmax()) == j0
    assert scores[0] == pytest.approx(5.0 * float(x[j0]), rel=1e-5)


def test_random_is_seeded_and_distinct(tiny):
    model, tok = tiny
    targets = discover_targets(model, "down_proj")
    a, _ = rank_neurons(model, targets, _ids(tok), "random", seed=3, top=50)
    b, _ = rank_neurons(model, targets, _ids(tok), "random", seed=3, top=50)
    c, _ = rank_neurons(model, targets, _ids(tok), "random", seed=4, top=50)
    assert a == b and a != c and len({n.name for n in a}) == 50
    assert len({n.layer for n in a}) > 1


@pytest.mark.parametrize("method", METHODS)
def test_baselines_restore_weights_grad_flags_and_grads(tiny, method):
    model, tok = tiny
    params = list(model.parameters())
    for i, p in enumerate(params):  # a mixed pattern of flags, and an existing .grad on one parameter
        p.requires_grad_(i % 3 != 0)
    params[1].grad = torch.full_like(params[1], 0.5)
    flags = [p.requires_grad for p in params]
    snap = weights_snapshot(model)
    model.train()
    r = baseline_result(model, tok, DEFAULT_TEXT, method, max_tokens=40, epsilon=0.05, max_neurons=20,
                        batch_size=3)
    assert [p.requires_grad for p in params] == flags
    assert torch.equal(params[1].grad, torch.full_like(params[1], 0.5))
    assert all(p.grad is None for i, p in enumerate(params) if i != 1)
    assert model.training
    assert_bit_identical(model, snap)
    assert r.params["ranker"] == method and r.curve
    assert len(r.top_ranked) == 20 and len({n.name for n in r.top_ranked}) == 20


def test_stage2_curve_matches_independent_masked_eval(stories):
    model, tok = stories
    snap = weights_snapshot(model)
    r = baseline_result(model, tok, None, "activation", max_tokens=64, epsilon=0.05, max_neurons=12,
                        strategy="linear", batch_size=4)
    assert_bit_identical(model, snap)
    ids = tokenize(tok, None, 64)
    curve = dict((int(n), v) for n, v in r.curve)
    assert sorted(curve)[:3] == [1, 2, 3]  # linear: every prefix size
    for n in (1, max(curve)):
        ev = evaluate_mask(model, tok, [x.name for x in r.top_ranked[:n]], ids=ids)
        assert ev["log10_ratio"] == pytest.approx(curve[n], abs=1e-4)
    if r.converged:
        assert curve[len(r.neurons)] >= 0.05 and all(v < 0.05 for n, v in curve.items() if n < len(r.neurons))


def test_compare_rankers_on_stories(stories):
    model, tok = stories
    res = compare_rankers(model, tok, None, ["sensitivity", "random", "superweight"], max_tokens=64, k=4,
                          epsilon=0.05, max_neurons=30)
    assert list(res) == ["sensitivity", "random", "superweight"]
    assert res["sensitivity"].params.get("ranker", "sensitivity") == "sensitivity"
    assert res["random"].params["ranker"] == "random"
    # the same Stage 2 clean NLL for every ranker (same text, same evaluator)
    cl = {round(r.clean_nll, 6) for r in res.values()}
    assert len(cl) == 1


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_result(model, tok, DEFAULT_TEXT, "magic")
    with pytest.raises(TypeError, match="unexpected"):
        baseline_result(model, tok, DEFAULT_TEXT, "random", bogus=1)
    # find_critical-only knobs are accepted (so a sweep grid can be shared) and ignored
    r = baseline_result(model, tok, DEFAULT_TEXT, "random", k=3, alpha=2.0, max_tokens=32, max_neurons=4)
    assert r.params["ranker"] == "random"


def test_baselines_cli(tmp_path, capsys):
    from achilles_fast.cli import main
    rc = main(["baselines", str(STORIES), "--methods", "sensitivity,random,taylor",
               "--k", "4", "--max-tokens", "64", "--epsilon", "0.05", "--max-neurons", "20", "--out",
               str(tmp_path / "b.json"), "--plot", str(tmp_path / "p")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "taylor" in out
    import json
    d = json.loads((tmp_path / "b.json").read_text())
    assert set(d) == {"sensitivity", "random", "taylor"}
    assert (tmp_path / "p" / "baselines_curves.png").exists() and (tmp_path / "p" / "baselines_curves.svg").exists()
    assert main(["baselines", str(STORIES), "--methods", "nope"]) == 2


@pytest.mark.slow
def test_smollm2_sensitivity_beats_random(smollm2, wikitext_text):
    """Real-size check: the sensitivity set collapses SmolLM2, the same number of random channels does not."""
    model, tok = smollm2
    text = wikitext_text[:3000]
    sens = compare_rankers(model, tok, text, ["sensitivity"], max_tokens=256, k=20, epsilon=1.0,
                           max_neurons=200)["sensitivity"]
    assert sens.converged and sens.log10_ratio >= 1.0
    n = len(sens.neurons)
    rnd = baseline_result(model, tok, text, "random", max_tokens=256, epsilon=1.0, max_neurons=n)
    assert max(v for _, v in rnd.curve) < 0.5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_superweight_formula_for_linear_and_conv1d_layouts(family):
    """score[i] = max_t |x_t,j*| * |W[i, j*]| (nn.Linear [out, in]) or |W[j*, i]| (GPT-2 Conv1D [in, out])."""
    model, tok = tiny_model(family, seed=2), ToyTokenizer()
    targets = discover_targets(model, "down_proj")
    ids = _ids(tok)
    xs = _record(model, targets, ids, lambda a, o: a[0])
    got = channel_scores(model, targets, ids, "superweight")
    for t, g in zip(targets, got):
        xmax = xs[t.name][0].abs().amax(0)
        j = int(xmax.argmax())
        w = t.module.weight.detach()
        col = w[:, j] if t.layout == "linear" else w[j, :]
        assert t.layout == ("conv1d" if family == "gpt2" else "linear")
        assert torch.allclose(g, col.abs() * xmax[j], rtol=1e-5)


# ---- the paper's baselines ------------------------------------------------------------------------------------------
def _literal_signed_ranking(values, targets, floor, top):
    """The paper's comparison scripts, literally: one Python entry per (module, position, channel) with
    |value| > floor, a stable descending sort, then each channel at its first entry."""
    entries = []
    for t in targets:
        v = values[t.name]  # [T, C]
        for s in range(v.shape[0]):
            for h in range(v.shape[1]):
                x = v[s, h].item()
                if abs(x) > floor:
                    entries.append((t.name, h, x))
    entries = sorted(entries, key=lambda e: e[2], reverse=True)
    seen = {}
    for name, h, _ in entries:
        seen.setdefault(f"{name}:{h}", None)
    return list(seen)[:top]


@pytest.mark.parametrize("scope", ["down_proj", "paper"])
def test_activation_signed_equals_literal_per_entry_reference(tiny, scope):
    model, tok = tiny
    ids = _ids(tok, 24)
    targets = discover_targets(model, scope)
    outs = {n: y[0] for n, y in _record(model, targets, ids, lambda a, o: o).items()}  # [T, C]
    got, scores = rank_neurons(model, targets, ids, "activation_signed", top=400)
    ref = _literal_signed_ranking(outs, targets, 1e-6, 400)
    assert [n.name for n in got] == ref
    assert scores == sorted(scores, reverse=True)
    for n, sc in zip(got, scores):  # a channel's score is its largest signed entry, not its largest |entry|
        assert sc == outs[n.module][:, n.channel].float().max().item()
    assert any(outs[n.module][:, n.channel].abs().max() > sc for n, sc in zip(got, scores))


def test_gradient_signed_equals_literal_per_entry_reference(tiny):
    model, tok = tiny
    ids = _ids(tok, 24)
    targets = discover_targets(model, "down_proj")
    grads = {n: g for n, (_, g) in _reference_grads(model, targets, ids).items()}
    got, _ = rank_neurons(model, targets, ids, "gradient_signed", top=300)
    ref = _literal_signed_ranking(grads, targets, 1e-8, 300)
    assert [n.name for n in got] == ref


def test_signed_floor_drops_small_entries():
    from achilles_fast.studies.baselines import _drop_small
    v = torch.tensor([[1e-7, -2e-6, 3.0], [0.0, -1e-6, 1e-6]])
    assert torch.equal(torch.isinf(_drop_small(v, 1e-6)), torch.tensor([[True, False, False], [True, True, True]]))


def test_random_levels_paper_protocol(tiny):
    """All-linear pool with lm_head; each run's level-L set equals masking its first L channels in place."""
    from achilles_fast.models.registry import linear_targets
    from achilles_fast.studies.baselines import random_levels
    model, tok = tiny
    snap = weights_snapshot(model)
    r = random_levels(model, tok, DEFAULT_TEXT, levels=[5, 20, 60], runs=3, pool="all-linear", max_tokens=40)
    assert_bit_identical(model, snap)
    pool = linear_targets(model)
    assert pool[-1].name == "lm_head" and r["pool_channels"] == sum(t.num_channels for t in pool)
    assert r["levels"] == [5, 20, 60] and len(r["log10_ratio"]) == 3 and all(len(x) == 3 for x in r["log10_ratio"])
    import statistics
    for row, mu, sd in zip(r["log10_ratio"], r["log10_ratio_mean"], r["log10_ratio_std"]):
        assert mu == pytest.approx(statistics.mean(row)) and sd == pytest.approx(statistics.stdev(row))
    assert len({tuple(x) for x in zip(*r["log10_ratio"])}) == 3  # runs differ
    # independent check of run 0: draw the same order, mask by literal output hooks, plain forward
    total = r["pool_channels"]
    order = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:60]
    offs, acc = {}, 0
    for t in pool:
        offs[t.name], acc = acc, acc + t.num_channels
    ids = tokenize(tok, DEFAULT_TEXT, 40)
    with torch.no_grad():
        clean = F.cross_entropy(model(input_ids=ids[None]).logits[0, :-1], ids[1:]).item()
    for li, level in enumerate([5, 20, 60]):
        chosen = order[:level].tolist()
        hs = []
        for t in pool:
            ch = [c - offs[t.name] for c in chosen if offs[t.name] <= c < offs[t.name] + t.num_channels]
            if ch:
                def hook(m, a, o, ch=ch):
                    o = o.clone()
                    o[..., ch] = 0.0
                    return o
                hs.append(t.module.register_forward_hook(hook))
        with torch.no_grad():
            nll = F.cross_entropy(model(input_ids=ids[None]).logits[0, :-1], ids[1:]).item()
        for h in hs:
            h.remove()
        assert r["log10_ratio"][li][0] == pytest.approx((nll - clean) / 2.302585092994046, abs=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        random_levels(model, tok, DEFAULT_TEXT, levels=[10 ** 7], runs=2)
    with pytest.raises(ValueError, match="pool"):
        random_levels(model, tok, DEFAULT_TEXT, pool="everything")


def test_baselines_cli_paper_options(tmp_path, capsys):
    from achilles_fast.cli import main
    import json
    model = str(STORIES)
    rc = main(["baselines", model, "--methods", "activation,gradient,random", "--signed-per-entry", "--pool",
               "all-linear", "--runs", "3", "--levels", "10,50", "--max-tokens", "48", "--epsilon", "0.05",
               "--max-neurons", "20", "--out", str(tmp_path / "b.json"), "--plot", str(tmp_path / "p")])
    assert rc == 0
    d = json.loads((tmp_path / "b.json").read_text())
    assert set(d) == {"activation_signed", "gradient_signed", "random"}
    assert d["random"]["levels"] == [10, 50] and d["random"]["runs"] == 3 and d["random"]["pool"] == "all-linear"
    assert "+-" in capsys.readouterr().out
    assert (tmp_path / "p" / "baselines_curves.svg").exists()
    assert main(["baselines", model, "--methods", "activation", "--runs", "3"]) == 2  # no random to apply it to
    assert main(["baselines", model, "--methods", "random", "--levels", "10,x"]) == 2
    assert main(["baselines", model, "--methods", "random", "--runs", "0"]) == 2
