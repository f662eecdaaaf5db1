"""Every section's numbers recomputed independently: plain forward hooks, brute force over j, output_attentions."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import (STORIES, ToyTokenizer, assert_bit_identical, by_module, hooked_log10_ratio, hooked_nll,
                      tiny_model, weights_snapshot)

from achilles_fast import find_critical
from achilles_fast.method.config import FindConfig
from achilles_fast.method.stage1 import sensitivity_scores
from achilles_fast.method.text import DEFAULT_TEXT
from achilles_fast.models.registry import discover_targets
from achilles_fast.studies.robustness import jaccard
from achilles_fast.studies.study import StudyParams, study
from achilles_fast.studies.study.scores import snapshot_scores

LN10 = math.log(10)
# stories260K: a small critical set (|S| <= 6: every proper subset) in a few seconds
CFG = dict(k=8, max_tokens=64, epsilon=0.05, max_neurons=60)
SP = StudyParams(alphas=(2.0, 5.0), ks=(4, 8), lengths=(8, 32), dtypes=("float32", "bfloat16"),
                 genres=("prose", "code"), component_ns=(10, 50), exhaustive_max=6, subsets_per_size=3, max_sizes=3,
                 max_singles=10, max_new_tokens=8)


# ---- independent helpers ----------------------------------------------------------------------------------------
def ratio(model, ids, names):
    return hooked_log10_ratio(model, ids, names)


def module_io(model, ids, name):
    """(input [T, I], output [T, C]) of a module on a plain forward."""
    got = {}
    h = dict(model.named_modules())[name].register_forward_hook(
        lambda m, a, out: got.update(x=a[0][0].detach().clone(), y=out[0].detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids[None], use_cache=False)
    finally:
        h.remove()
    return got["x"], got["y"]


@pytest.fixture(scope="module")
def stories_study(stories, tmp_path_factory):
    model, tok = stories
    snap = weights_snapshot(model)
    out = tmp_path_factory.mktemp("study")
    doc = study(model, tok, out=out, study_params=SP, progress=False, **CFG)
    assert_bit_identical(model, snap)
    ids = tok(DEFAULT_TEXT, return_tensors="pt")["input_ids"][0][:CFG["max_tokens"]]
    return model, tok, doc, {s["name"]: s for s in doc["sections"]}, ids, out


# ---- Stage 1 once ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["stories", "tiny"])
def test_snapshot_scores_equal_stage1_at_each_k(which, stories):
    if which == "stories":
        model, tok = stories
        ids = tok(DEFAULT_TEXT, return_tensors="pt")["input_ids"][0][:40]
    else:
        model, ids = tiny_model("llama"), torch.arange(3, 30)
    targets = discover_targets(model, "all")
    cfg = FindConfig(alpha=2.0, max_batch_tokens=3 * int(ids.numel()))  # chunks of 3 samples: cut at K=4 too
    snaps = snapshot_scores(model, targets, ids, [4, 9], cfg)
    for k in (4, 9):
        ref = sensitivity_scores(model, targets, ids, k=k, alpha=2.0)  # [T, C] per target
        for s, r in zip(snaps[k], ref):
            torch.testing.assert_close(s.values, r.amax(0), rtol=1e-5, atol=1e-6)


def test_default_set_is_find_critical(stories_study):
    model, tok, doc, secs, ids, _ = stories_study
    ref = find_critical(model, tok, progress=False, **CFG)
    res = secs["critical"]["data"]["result"]
    assert [n["name"] for n in res["neurons"]] == ref.names and ref.converged
    assert res["log10_ratio"] == pytest.approx(ref.log10_ratio, abs=1e-6)
    assert ratio(model, ids, ref.names) == pytest.approx(ref.log10_ratio, abs=1e-4)
    curve = dict((int(n), v) for n, v in secs["critical"]["data"]["curve"])
    assert set(range(1, 2 * len(ref.names) + 1)) <= set(curve)  # dense around the set
    for n in (1, len(ref.names) - 1, 20):
        assert curve[n] == pytest.approx(ratio(model, ids, [x.name for x in ref.top_ranked[:n]]), abs=1e-4)
    rows = secs["critical"]["tables"][0]["rows"]
    n_layers = model.config.num_hidden_layers
    for row, n in zip(rows, ref.neurons):
        assert row[1] == n.name and row[2] == n.layer
        assert row[3] == ("first", "middle", "last")[min(2, 3 * n.layer // n_layers)]


# ---- cooperativity -----------------------------------------------------------------------------------------------
def test_cooperativity_subsets_by_plain_hooks(stories_study):
    model, tok, doc, secs, ids, _ = stories_study
    d = secs["cooperativity"]["data"]
    names = [n["name"] for n in secs["critical"]["data"]["result"]["neurons"]]
    n = len(names)
    assert 2 <= n <= SP.exhaustive_max, "pick CFG so that the stories260K set is small"
    assert len(d["subsets"]) == 2 ** n - 2  # every non-empty proper subset
    assert d["full"] == pytest.approx(ratio(model, ids, names), abs=1e-4)
    for s in d["subsets"][:: max(1, len(d["subsets"]) // 6)] + d["subsets"][-1:]:
        sub = [names[i] for i in s["indices"]]
        assert s["log10_ratio"] == pytest.approx(ratio(model, ids, sub), abs=1e-4)
    for a in d["alone"][:3]:
        assert a["log10_ratio"] == pytest.approx(ratio(model, ids, [a["neuron"]]), abs=1e-4)
    crossing = sum(s["log10_ratio"] >= d["epsilon"] for s in d["subsets"])
    v = secs["cooperativity"]["verdicts"][0]
    assert v["verdict"] == ("holds" if crossing == 0 else "does not hold")


def test_subset_plan_large_sets():
    from achilles_fast.studies.study.sections.cooperativity import subset_plan
    plan = subset_plan(30, 10, 5, 4, seed=0)
    assert len(set(plan)) == len(plan) and all(0 < len(s) < 30 for s in plan)
    assert sum(len(s) == 29 for s in plan) == 30  # leave-one-out complete
    assert len({len(s) for s in plan}) <= 4 + 1
    assert subset_plan(30, 10, 5, 4, seed=0) == plan


# ---- components --------------------------------------------------------------------------------------------------
def test_component_top_n_by_plain_hooks(stories_study):
    model, tok, doc, secs, ids, _ = stories_study
    d = secs["components"]["data"]
    targets = discover_targets(model, "all")
    scores = sensitivity_scores(model, targets, ids, k=CFG["k"], alpha=5.0)
    per_kind = {}
    for t, s in zip(targets, scores):
        per_kind.setdefault(t.kind, []).append((t, s.amax(0)))  # [C] max over positions
    checked = 0
    for row in d["components"]:
        kind = row["component"]
        if kind not in ("mlp.up_proj", "attn.k_proj", "mlp.down_proj"):
            continue
        parts = per_kind[kind]
        flat = torch.cat([s for _, s in parts])
        order = torch.sort(flat, descending=True, stable=True).indices
        owners = [(t.name, c) for t, s in parts for c in range(s.numel())]
        for n_str, v in row["log10_ratio"].items():
            top = [f"{owners[i][0]}:{owners[i][1]}" for i in order[: min(int(n_str), flat.numel())].tolist()]
            assert v == pytest.approx(ratio(model, ids, top), abs=2e-4), (kind, n_str)
            checked += 1
    assert checked >= 6
    n_set = len(secs["critical"]["data"]["result"]["neurons"])
    down = next(r for r in d["components"] if r["component"] == "mlp.down_proj")
    assert down["log10_ratio"][str(n_set)] == pytest.approx(secs["critical"]["data"]["result"]["log10_ratio"],
                                                            abs=1e-4)
    # random down_proj: the same seeded draw, recomputed
    dt = discover_targets(model, "down_proj")
    g = torch.Generator().manual_seed(0)
    perm = torch.sort(torch.rand(sum(t.num_channels for t in dt), generator=g), descending=True, stable=True).indices
    owners = [(t.name, c) for t in dt for c in range(t.num_channels)]
    rnd = next(r for r in d["components"] if r["component"] == "random down_proj")
    top = [f"{owners[i][0]}:{owners[i][1]}" for i in perm[:10].tolist()]
    assert rnd["log10_ratio"]["10"] == pytest.approx(ratio(model, ids, top), abs=1e-4)


# ---- stability ---------------------------------------------------------------------------------------------------
def test_stability_variants_recomputed(stories_study):
    model, tok, doc, secs, ids, _ = stories_study
    rows = {r["label"]: r for r in secs["stability"]["data"]["rows"]}
    default = {n["name"] for n in secs["critical"]["data"]["result"]["neurons"]}
    a2 = find_critical(model, tok, progress=False, **dict(CFG, alpha=2.0))
    assert rows["alpha=2"]["neurons"] == a2.names
    k4 = find_critical(model, tok, progress=False, **dict(CFG, k=4))  # its own Stage 1 at K=4
    assert rows["K=4"]["neurons"] == k4.names
    from achilles_fast.studies.study.genres import GENRES
    prose = find_critical(model, tok, GENRES["prose"], progress=False, **CFG)
    assert rows["text:prose"]["neurons"] == prose.names
    snap = weights_snapshot(model)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    assert rows["bfloat16"]["neurons"] == find_critical(bf, tok, progress=False, **CFG).names
    assert_bit_identical(model, snap)
    for r in rows.values():
        if r["n"] is not None:
            assert r["jaccard"] == pytest.approx(jaccard(set(r["neurons"]), default))
    labels, m = secs["stability"]["data"]["labels"], secs["stability"]["data"]["jaccard"]
    assert labels[0] == "default" and len(m) == len(labels) and m[0][0] == 1.0


def test_stability_length_prefix(stories_study):
    """L = 8: Stage 1 on the first 8 tokens only, Stage 2 on the full evaluation text."""
    from achilles_fast.method.rankers import make_ranker
    from achilles_fast.method.stage2 import search_ranking
    model, tok, doc, secs, ids, _ = stories_study
    row = next(r for r in secs["stability"]["data"]["rows"] if r["label"] == "L=8")
    cfg = FindConfig(**CFG)
    targets = discover_targets(model, "down_proj")
    ranking = make_ranker(cfg).rank(model, targets, ids[:8])
    assert row["neurons"] == search_ranking(model, ranking, ids, cfg).names


# ---- mechanism ---------------------------------------------------------------------------------------------------
def test_mechanism_activation_and_super_weight_brute_force(stories_study):
    model, tok, doc, secs, ids, _ = stories_study
    d = secs["mechanism"]["data"]
    for nd in d["neurons"]:
        module, c = nd["neuron"].rsplit(":", 1)
        c = int(c)
        x, y = module_io(model, ids, module)
        a = y[:, c]
        assert nd["max_abs"] == pytest.approx(float(a.abs().max()), rel=1e-5)
        assert nd["position"] == int(a.abs().argmax())
        assert nd["median_abs"] == pytest.approx(float(a.abs().median()), rel=1e-5, abs=1e-7)
        t = nd["position"]
        lin = dict(model.named_modules())[module]
        base = float(lin(x[t:t + 1])[0, c])
        deltas = []
        with torch.no_grad():
            for j in range(x.shape[1]):  # brute force: drop input coordinate j, see how output c moves
                xj = x[t:t + 1].clone()
                xj[0, j] = 0
                deltas.append(base - float(lin(xj)[0, c]))
        j = max(range(len(deltas)), key=lambda i: abs(deltas[i]))
        sw = nd["super_weight"]
        assert sw["j"] == j
        assert sw["weight"] == pytest.approx(float(lin.weight[c, j]))
        assert sw["contribution"] == pytest.approx(deltas[j], rel=1e-3, abs=1e-5)
        bias = 0.0 if lin.bias is None else float(lin.bias[c])
        assert sw["share"] == pytest.approx(deltas[j] / (base - bias), rel=1e-3, abs=1e-5)


def test_mechanism_attention_from_output_attentions(stories_study):
    from transformers import AutoModelForCausalLM
    model, tok, doc, secs, ids, _ = stories_study
    att = secs["mechanism"]["data"]["attention"]
    eager = AutoModelForCausalLM.from_pretrained(str(STORIES), attn_implementation="eager").eval()
    names = [n["name"] for n in secs["critical"]["data"]["result"]["neurons"]]

    def mass(zero):
        mods = dict(eager.named_modules())
        hs = [mods[m].register_forward_hook(lambda mod, a, out, ch=ch: out.index_fill(-1, torch.tensor(ch), 0))
              for m, ch in zero.items()]
        try:
            with torch.no_grad():
                out = eager(input_ids=ids[None], output_attentions=True)
        finally:
            for h in hs:
                h.remove()
        return [float(a[0, :, 1:, 0].mean()) for a in out.attentions]

    assert att["clean"] == pytest.approx(mass({}), abs=1e-5)
    assert att["masked"] == pytest.approx(mass(by_module(names)), abs=1e-5)


def test_mechanism_zero_vs_mean_ablation(stories_study):
    model, tok, doc, secs, ids, _ = stories_study
    d = secs["mechanism"]["data"]
    names = [n["neuron"] for n in d["neurons"]]
    assert d["zero_ablation"] == pytest.approx(ratio(model, ids, names), abs=1e-4)
    const = {}
    for m, chans in by_module(names).items():
        _, y = module_io(model, ids, m)
        const[m] = (chans, y[:, chans].mean(0))
    mean = (hooked_nll(model, ids, const=const) - hooked_nll(model, ids)) / LN10
    assert d["mean_ablation"] == pytest.approx(mean, abs=1e-4)


def test_attention_unavailable_is_reported_and_the_rest_runs(stories, tmp_path):
    model, tok = stories
    m = copy.deepcopy(model)
    m.config._attn_implementation = "sdpa"

    def refuse(*a, **k):
        raise ValueError("this attention cannot return its weights")
    m.set_attn_implementation = refuse
    doc = study(m, tok, sections="mechanism", out=tmp_path, study_params=SP, progress=False, **CFG)
    sec = doc["sections"][0]
    att = next(v for v in sec["verdicts"] if "attention sinks" in v["claim"])
    assert att["verdict"] == "not applicable" and "cannot return its weights" in att["detail"]
    assert sec["data"]["zero_ablation"] > 0 and sec["data"]["neurons"]
    assert "unavailable" in sec["data"]["attention"]


# ---- tiny random models ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tiny_random_model_sections(family):
    model = tiny_model(family)
    tok = ToyTokenizer()
    snap = weights_snapshot(model)
    text = "the quick brown fox jumps over the lazy dog, again and again and again."
    sp = StudyParams(alphas=(5.0,), ks=(2, 4), lengths=(16,), dtypes=("float32",), genres=("list",),
                     component_ns=(5,), exhaustive_max=4, subsets_per_size=2, max_sizes=2, max_singles=4,
                     max_new_tokens=4)
    cfg = dict(k=4, epsilon=0.01, max_neurons=30, max_tokens=48)
    doc = study(model, tok, text, sections="critical,cooperativity,components,mechanism", study_params=sp,
                progress=False, **cfg)
    assert_bit_identical(model, snap)
    secs = {s["name"]: s for s in doc["sections"]}
    res = secs["critical"]["data"]["result"]
    ids = tok(text)["input_ids"][0][:48]
    names = [n["name"] for n in res["neurons"]]
    if res["converged"]:
        assert res["log10_ratio"] == pytest.approx(ratio(model, ids, names), abs=1e-4)
        for s in secs["cooperativity"]["data"]["subsets"][:5]:
            assert s["log10_ratio"] == pytest.approx(ratio(model, ids, [names[i] for i in s["indices"]]), abs=1e-4)
    for v in (v for s in doc["sections"] for v in s["verdicts"]):
        assert v["verdict"] in ("holds", "does not hold", "not applicable")
