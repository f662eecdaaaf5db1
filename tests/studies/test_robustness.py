"""Robustness across texts (Jaccard) and windowed corpus evaluation with/without a mask."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import STORIES, WIKITEXT, assert_bit_identical, need_wikitext, weights_snapshot

from achilles_fast.studies.robustness import critical_overlap, jaccard, overlap, read_texts, robustness
from achilles_fast.method.api import evaluate_corpus
from achilles_fast.method.text import corpus_windows

TEXTS = {
    "a_park": "Once upon a time there was a little girl named Lily. She loved to play in the park with her dog. "
              "One day she found a big red ball under a tree and she was very happy.",
    "b_boat": "Tom had a small boat. Every day he took it to the lake with his mom. The boat was blue and fast. "
              "One day the wind was strong and the boat went far away, and Tom was sad.",
    "c_cake": "Mom made a big cake for Sue. It was her birthday and all her friends came to play. They sang a "
              "song and ate the cake. Sue said thank you to her mom and gave her a hug.",
}


def test_jaccard_and_overlap():
    assert jaccard(set(), set()) == 1.0
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    rep = overlap({"x": ["a", "b", "c"], "y": ["b", "c", "d"], "z": ["c"]})
    assert rep["names"] == ["x", "y", "z"] and rep["sizes"] == [3, 3, 1]
    m = rep["jaccard"]
    assert m[0][1] == pytest.approx(2 / 4) and m[0][2] == pytest.approx(1 / 3) and m[1][1] == 1.0
    assert m[1][0] == m[0][1]
    assert rep["intersection"] == ["c"]
    assert rep["union"][0] == "c" and set(rep["union"]) == {"a", "b", "c", "d"}
    assert rep["frequency"] == {"c": 3, "b": 2, "a": 1, "d": 1}


def test_read_texts(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_texts(str(tmp_path / "none"))
    (tmp_path / "one.txt").write_text("x")
    with pytest.raises(ValueError, match="at least 2"):
        read_texts(str(tmp_path))
    (tmp_path / "two.txt").write_text("y")
    assert list(read_texts(str(tmp_path))) == ["one", "two"]


def test_robustness_on_stories(stories):
    model, tok = stories
    snap = weights_snapshot(model)
    rep = robustness(model, tok, TEXTS, k=4, max_tokens=64, epsilon=0.02, max_neurons=40)
    assert_bit_identical(model, snap)
    assert rep["names"] == list(TEXTS)
    sets = {n: {x["name"] for x in rep["results"][n]["neurons"]} for n in rep["names"]}
    for i, a in enumerate(rep["names"]):
        for j, b in enumerate(rep["names"]):
            assert rep["jaccard"][i][j] == pytest.approx(jaccard(sets[a], sets[b]))
    assert set(rep["intersection"]) == set.intersection(*sets.values())
    assert any(rep["converged"])


def test_critical_overlap_uses_result_names(stories):
    from achilles_fast import find_critical
    model, tok = stories
    r1 = find_critical(model, tok, TEXTS["a_park"], k=4, max_tokens=64, epsilon=0.02, max_neurons=40,
                       progress=False)
    rep = critical_overlap({"a": r1, "b": r1})
    assert rep["jaccard"][0][1] == 1.0 and set(rep["intersection"]) == set(r1.names)


def test_robustness_cli(tmp_path, capsys):
    from achilles_fast.cli import main
    d = tmp_path / "texts"
    d.mkdir()
    for k, v in TEXTS.items():
        (d / f"{k}.txt").write_text(v)
    rc = main(["robustness", str(STORIES), "--texts", str(d), "--k", "4",
               "--max-tokens", "64", "--epsilon", "0.02", "--max-neurons", "40", "--out", str(tmp_path / "r.json"),
               "--plot", str(tmp_path / "p")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Jaccard" in out and "a_park" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert len(rep["jaccard"]) == 3 and all(len(r) == 3 for r in rep["jaccard"])
    assert (tmp_path / "p" / "robustness_jaccard.png").exists()


# ---- windowed corpus evaluation ----------------------------------------------------------------------------
def _manual_nll(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


def test_corpus_windows_shape(stories, wikitext_text):
    _, tok = stories
    w = corpus_windows(tok, wikitext_text[:20000], window=64, max_windows=5)
    assert w.shape == (5, 65) and bool((w[:, 0] == tok.bos_token_id).all())
    w2 = corpus_windows(tok, wikitext_text[:20000], window=64, max_windows=5, bos=False)
    assert w2.shape == (5, 64) and torch.equal(w2, w[:, 1:])


def test_evaluate_corpus_matches_manual_zeroing(stories, wikitext_text):
    model, tok = stories
    names = ["model.layers.4.mlp.down_proj:20", "model.layers.3.mlp.down_proj:15", "model.layers.0.mlp.down_proj:3"]
    snap = weights_snapshot(model)
    r = evaluate_corpus(model, tok, names, wikitext_text[:30000], window=64, max_windows=6)
    assert_bit_identical(model, snap)
    ids = corpus_windows(tok, wikitext_text[:30000], window=64, max_windows=6)
    assert r["windows"] == 6 and r["n_tokens"] == 6 * 64 and r["n_neurons"] == 3
    assert r["clean_nll"] == pytest.approx(_manual_nll(model, ids), rel=1e-5)
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        for n in names:
            mod, ch = n.rsplit(":", 1)
            m2.get_submodule(mod).weight[int(ch)] = 0.0
    masked_nll = _manual_nll(m2, ids)
    assert r["masked_nll"] == pytest.approx(masked_nll, rel=1e-5)
    assert r["log10_ratio"] == pytest.approx((masked_nll - r["clean_nll"]) / math.log(10), abs=1e-6)
    assert r["log10_ratio"] > 0
    empty = evaluate_corpus(model, tok, [], wikitext_text[:30000], window=64, max_windows=6)
    assert empty["log10_ratio"] == 0.0


def test_evaluate_cli(tmp_path, capsys):
    from achilles_fast.cli import main
    need_wikitext()
    model = str(STORIES)
    assert main(["find", model, "--k", "4", "--max-tokens", "64", "--epsilon", "0.05", "--max-neurons", "30",
                 "--quiet", "--out", str(tmp_path / "r.json")]) in (0, 1)
    rc = main(["evaluate", model, "--neurons", str(tmp_path / "r.json"), "--corpus", str(WIKITEXT), "--window",
               "128", "--max-windows", "4", "--out", str(tmp_path / "e.json")])
    assert rc == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["windows"] == 4 and e["window"] == 128
    assert e["n_neurons"] == len(json.loads((tmp_path / "r.json").read_text())["neurons"])
    assert "log10 PPL ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_smollm2_critical_set_hurts_wikitext(smollm2, wikitext_text):
    """SmolLM2's critical set (found on one passage) raises windowed WikiText PPL by orders of magnitude."""
    from achilles_fast import find_critical
    model, tok = smollm2
    res = find_critical(model, tok, wikitext_text[:2000], max_tokens=128, k=20, epsilon=1.0, max_neurons=300,
                        progress=False)
    assert res.converged
    r = evaluate_corpus(model, tok, res.names, wikitext_text, window=256, max_windows=8)
    assert r["log10_ratio"] > 1.0
