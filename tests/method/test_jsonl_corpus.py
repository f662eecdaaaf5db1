"""JSON-lines corpus evaluation (the paper's C4 evaluator): per-sample truncation, token-weighted NLL."""
from __future__ import annotations

import copy
import gzip
import json
import math

import pytest
import torch
import torch.nn.functional as F

from achilles_fast.method.api import evaluate_corpus
from achilles_fast.method.text import CorpusFormatError, read_jsonl_texts
from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

SAMPLES = ["The fox sang to the owls at night, and the owls sang back until morning came over the hills.",
           "A short one.", "x",  # 1 token: skipped (no next-token loss)
           "Rain fell on the roof of the little house by the river " * 6]  # 336 tokens: over the tiny context


def _independent(model, tok, texts, max_tokens, zero=None):
    """Sum of every predicted token's NLL / their count, one plain forward per sample; ``zero``: (module, rows)
    whose weight rows are zeroed on a copy of the model."""
    m = copy.deepcopy(model)
    if zero is not None:
        name, rows = zero
        with torch.no_grad():
            dict(m.named_modules())[name].weight[rows] = 0
    total, count = 0.0, 0
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"][0][:max_tokens]
        if ids.numel() < 2:
            continue
        with torch.no_grad():
            logits = m(input_ids=ids[None]).logits[0, :-1]
        total += F.cross_entropy(logits.double(), ids[1:], reduction="sum").item()
        count += ids.numel() - 1
    return total / count, count


@pytest.mark.parametrize("max_tokens", [16, 512])
def test_samples_match_an_independent_computation(max_tokens):
    model, tok = tiny_model("llama", seed=2, initializer_range=0.3), ToyTokenizer()
    snap = weights_snapshot(model)
    neurons = ["model.layers.1.mlp.down_proj:3", "model.layers.2.mlp.down_proj:7"]
    r = evaluate_corpus(model, tok, neurons, SAMPLES, max_tokens=max_tokens, max_batch_tokens=64)
    assert_bit_identical(model, snap)
    limit = min(max_tokens, model.config.max_position_embeddings)  # 512: cut to the model's context (256)
    clean, n = _independent(model, tok, SAMPLES, limit)
    assert r["clean_nll"] == pytest.approx(clean, abs=1e-5) and r["n_predicted_tokens"] == n
    assert r["samples"] == 3 and r["skipped_samples"] == 1
    # masking both down_proj rows in place on a copy, twice (one per module)
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        m2.model.layers[1].mlp.down_proj.weight[3] = 0
    masked_ref, _ = _independent(m2, tok, SAMPLES, limit, zero=("model.layers.2.mlp.down_proj", [7]))
    assert r["masked_nll"] == pytest.approx(masked_ref, abs=1e-5)
    assert r["log10_ratio"] == pytest.approx((masked_ref - clean) / math.log(10), abs=1e-5)
    assert r["masked_nll"] != pytest.approx(r["clean_nll"], abs=1e-6)


def test_samples_are_token_weighted_not_sample_weighted():
    model, tok = tiny_model("llama", seed=2), ToyTokenizer()
    short, long = "ab", "a long sample with many more tokens than the other one has " * 3
    r = evaluate_corpus(model, tok, [], [short, long], max_tokens=512)
    a, na = _independent(model, tok, [short], 512)
    b, nb = _independent(model, tok, [long], 512)
    assert r["clean_nll"] == pytest.approx((a * na + b * nb) / (na + nb), abs=1e-5)
    assert r["clean_nll"] != pytest.approx((a + b) / 2, abs=1e-4)


def test_read_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "one"}\n\n{"text": "two", "url": "u"}\n', encoding="utf-8")
    assert read_jsonl_texts(str(p)) == ["one", "two"]
    g = tmp_path / "c4.json.gz"
    with gzip.open(g, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"content": "zipped"}) + "\n")
    assert read_jsonl_texts(str(g), "content") == ["zipped"]


@pytest.mark.parametrize("body,field,needle", [
    ('{"text": "ok"}\n{"text": "ok"\n', "text", "line 2 is not JSON"),
    ('{"text": "ok"}\n["a list"]\n', "text", "line 2 is not a JSON object"),
    ('{"text": "ok"}\n{"body": "no text"}\n', "text", "line 2 has no field 'text'"),
    ('{"text": 3}\n', "text", "line 1: field 'text' is int"),
    ('{"text": "ok"}\n', "content", "line 1 has no field 'content'"),
    ("\n\n", "text", "empty corpus"),
    ("", "text", "empty corpus"),
])
def test_read_jsonl_errors(tmp_path, body, field, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=needle):
        read_jsonl_texts(str(p), field)


def test_no_usable_sample():
    model, tok = tiny_model("llama"), ToyTokenizer()
    with pytest.raises(ValueError, match="no sample"):
        evaluate_corpus(model, tok, [], ["a", "b"], max_tokens=512)
