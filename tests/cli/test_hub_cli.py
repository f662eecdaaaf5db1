"""The CLI by hub id (offline hub cache around stories260K) and masked-checkpoint export, as a user runs them."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import STORIES

REPO = "tiny-org/stories260K"


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "achilles_fast.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_find_mask_sweep_by_hub_id(hub_cache, tmp_path):
    _, (main, v0) = hub_cache
    out = tmp_path / "r.json"
    p = cli("find", f"{REPO}@v0", "--k", 6, "--epsilon", 0.3, "--max-tokens", 64, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["model"] == f"{REPO}@v0" and res["source"]["commit"] == v0 and res["converged"]
    assert set(res["source"]["weights_sha256"]) == {"model.safetensors"}
    m = cli("mask", f"{REPO}@{v0}", "--neurons", out, "--max-tokens", 64, "--out", tmp_path / "m.json")
    assert m.returncode == 0, m.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["log10_ratio"] == pytest.approx(res["log10_ratio"], abs=1e-4)

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"db: {tmp_path / 's.db'}\ncheckpoints: [{REPO}, {REPO}@v0]\ntexts: [default]\n"
                    "params: {max_tokens: 64, k: 4, max_neurons: 20, epsilon: 0.3}\n")
    s = cli("sweep", spec)
    assert s.returncode == 0, s.stderr[-3000:]
    from achilles_fast.studies.sweep import SweepDB
    with SweepDB(str(tmp_path / "s.db")) as db:
        rows = db.rows()
    commits = {r["checkpoint"]: r["result"]["source"]["commit"] for r in rows}
    assert commits == {REPO: main, f"{REPO}@v0": v0}


@pytest.mark.parametrize("args,needle", [
    (["find", "other-org/absent"], "hub repo 'other-org/absent' is not cached"),
    (["find", f"{REPO}@no-such-rev"], "revision 'no-such-rev' of tiny-org/stories260K is not cached"),
    (["find", f"{REPO}/model.Q4_0.gguf"], "'model.Q4_0.gguf' is not in tiny-org/stories260K@"),
    (["mask", REPO, "--neurons", "model.layers.0.mlp.down_proj:1", "--gguf-file", "x.gguf"], "'x.gguf' is not in"),
    (["find", "org/na--me"], "--"),
])
def test_hub_bad_input(hub_cache, args, needle):
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len([x for x in p.stderr.splitlines() if "error:" in x]) == 1


def test_mask_save_pretrained_round_trip(tmp_path):
    r = tmp_path / "r.json"
    assert cli("find", STORIES, "--k", 6, "--epsilon", 1, "--out", r, "--quiet").returncode == 0
    out, ev = tmp_path / "masked", tmp_path / "ev.json"
    p = cli("mask", STORIES, "--neurons", r, "--save-pretrained", out, "--out", ev)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "saved checkpoint" in p.stdout
    d = json.loads(ev.read_text())
    # the saved folder, loaded by plain transformers, has the masked PPL: compare with a clean run of its NLL
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from achilles_fast.method.perplexity import NLLEvaluator
    from achilles_fast.method.text import tokenize
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        nll = NLLEvaluator(model, tokenize(tok, None, 512, "text")).nll()
    assert (nll - d["clean_nll"]) / math.log(10) == pytest.approx(d["log10_ratio"], abs=1e-5)
    meta = json.loads((out / "achilles_fast_mask.json").read_text())
    assert meta["masked_neurons"] == [n["name"] for n in json.loads(r.read_text())["neurons"]]
    # refused: a non-empty folder without --overwrite (before loading anything), nothing changed
    before = sorted(os.listdir(out))
    p = cli("mask", STORIES, "--neurons", r, "--save-pretrained", out)
    assert p.returncode == 2 and "is not empty: pass --overwrite" in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(out)) == before
    p = cli("mask", STORIES, "--neurons", r, "--save-pretrained", out, "--overwrite")
    assert p.returncode == 0 and sorted(os.listdir(out)) == before
