"""Rankers side by side: the same Stage 2 for every ranker, the paper's random baseline, the comparison table and
record, the ``baselines`` command. (Each ranker's own scores: tests/method/rankers/.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import STORIES, ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

from achilles_fast.method.api import evaluate_mask
from achilles_fast.method.text import DEFAULT_TEXT, tokenize
from achilles_fast.studies.baselines import (baseline_result, compare_rankers, comparison_record, comparison_table,
                                             random_levels)


@pytest.fixture
def tiny():
    return tiny_model("llama", seed=1, initializer_range=0.3), ToyTokenizer()


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
    with pytest.raises(ValueError, match="unknown ranker"):
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


def test_random_levels_paper_protocol(tiny):
    """All-linear pool with lm_head; each run's level-L set equals masking its first L channels in place."""
    from achilles_fast.models.registry import linear_targets
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


def test_comparison_table_and_record(tiny):
    model, tok = tiny
    res = compare_rankers(model, tok, DEFAULT_TEXT, ["random", "activation"], max_tokens=32, epsilon=0.05,
                          max_neurons=10)
    rnd = random_levels(model, tok, DEFAULT_TEXT, levels=[2, 4], runs=2, pool="targets", max_tokens=32)
    lines = comparison_table(res, rnd, model_name="tiny", epsilon=0.05, max_neurons=10).splitlines()
    assert lines[0] == "model tiny  (epsilon 0.05, max 10 neurons)" and lines[1].split()[:2] == ["ranker", "critical"]
    for line, (m, r) in zip(lines[2:4], res.items()):
        n = str(len(r.neurons)) if r.converged else ">10"
        assert line.split() == [m, n, "n/a" if r.log10_ratio is None else f"{r.log10_ratio:.3f}", str(len(r.curve))]
    assert "2 runs per level" in lines[4]
    assert [x.split()[0] for x in lines[5:]] == ["2", "4"]
    assert lines[5].split()[1] == f"{rnd['log10_ratio_mean'][0]:.4f}"
    rec = comparison_record(res, rnd, model_name="tiny")
    assert list(rec) == ["random", "activation"]
    assert rec["activation"]["curve"] == res["activation"].curve and rec["activation"]["model"] == "tiny"
    assert rec["random"]["levels"] == [2, 4] and rec["random"]["model"] == "tiny"  # the paper's random replaces ours
    assert comparison_table(res, model_name="m", epsilon=1.0, max_neurons=10).count("\n") == 3


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
