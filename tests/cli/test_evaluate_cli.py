"""``achilles-fast evaluate``: JSON-lines corpora (C4 style) and raw text; bad inputs end in one line, exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import STORIES

NEURON = "model.layers.4.mlp.down_proj:10"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "achilles_fast.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_evaluate_jsonl_and_text(tmp_path):
    from achilles_fast.method.api import evaluate_corpus
    from achilles_fast.models.loading import load_model
    recs = [{"text": "Once upon a time there was a little dog.", "id": 1}, {"text": "Lily saw a big red ball."}]
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    r = cli("evaluate", STORIES, "--neurons", NEURON, "--corpus", p, "--max-tokens", "8", "--out", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    assert "2 sample(s), each <= 8 tokens" in r.stdout
    got = json.loads((tmp_path / "e.json").read_text())
    model, tok, _ = load_model(str(STORIES))
    ref = evaluate_corpus(model, tok, [NEURON], [x["text"] for x in recs], max_tokens=8)
    assert got["log10_ratio"] == pytest.approx(ref["log10_ratio"], abs=1e-6) and got["samples"] == 2
    # --field on another name; a raw text file keeps the windowed evaluation
    q = tmp_path / "d.data"
    q.write_text("\n".join(json.dumps({"body": x["text"]}) for x in recs), encoding="utf-8")
    assert cli("evaluate", STORIES, "--neurons", NEURON, "--corpus", q, "--field", "body").returncode == 0
    t = tmp_path / "t.txt"
    t.write_text(" ".join(x["text"] for x in recs) * 20, encoding="utf-8")
    r = cli("evaluate", STORIES, "--neurons", NEURON, "--corpus", t, "--window", "32")
    assert r.returncode == 0 and "window(s) x 32 tokens" in r.stdout, r.stderr


@pytest.mark.parametrize("body,extra,needle", [
    ('{"text": "ok"}\n{"text": oops}\n', [], "line 2 is not JSON"),
    ('{"text": "ok"}\n', ["--field", "content"], "line 1 has no field 'content'"),
    ("", [], "empty corpus"),
    ('{"text": "ok"}\n', ["--max-tokens", "1"], "--max-tokens must be >= 2"),
    ('{"text": "ok"}\n', ["--max-samples", "0"], "argument --max-samples: must be an integer >= 1"),
])
def test_evaluate_bad_jsonl(tmp_path, body, extra, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text(body, encoding="utf-8")
    r = cli("evaluate", STORIES, "--neurons", NEURON, "--corpus", p, *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_max_samples_needs_json_lines(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("Once upon a time. " * 50, encoding="utf-8")
    r = cli("evaluate", STORIES, "--neurons", NEURON, "--corpus", t, "--max-samples", "3")
    assert r.returncode == 2 and "--max-samples applies to JSON-lines corpora" in r.stderr, r.stderr
