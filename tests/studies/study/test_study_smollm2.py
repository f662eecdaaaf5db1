"""Slow: the quick study on SmolLM2-135M, its key facts checked against independent computations."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import assert_bit_identical, by_module, hooked_log10_ratio, weights_snapshot

from achilles_fast import find_critical
from achilles_fast.method.text import DEFAULT_TEXT
from achilles_fast.studies.study import SECTIONS, study


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~5 min quiet; far more on a shared machine
def test_smollm2_quick_study_key_facts(smollm2, tmp_path):
    model, tok = smollm2
    snap = weights_snapshot(model)
    doc = study(model, tok, out=tmp_path, quick=True, progress=False)
    assert_bit_identical(model, snap)
    secs = {s["name"]: s for s in doc["sections"]}
    assert list(secs) == list(SECTIONS) and (tmp_path / "report.html").is_file()
    ids = tok(DEFAULT_TEXT, return_tensors="pt")["input_ids"][0]

    # 1. the default set is find_critical's, and its ratio is what plain hooks give
    ref = find_critical(model, tok, progress=False)
    res = secs["critical"]["data"]["result"]
    names = [n["name"] for n in res["neurons"]]
    assert names == ref.names and ref.converged
    assert res["log10_ratio"] == pytest.approx(hooked_log10_ratio(model, ids, names), abs=1e-3)
    assert res["log10_ratio"] > 2  # SmolLM2 collapses

    # 3. components: down_proj at N = |S| is the set itself; random down_proj channels do little
    comps = {c["component"]: c for c in secs["components"]["data"]["components"]}
    n = str(len(names))
    assert comps["mlp.down_proj"]["log10_ratio"][n] == pytest.approx(res["log10_ratio"], abs=1e-3)
    assert comps["random down_proj"]["log10_ratio"]["100"] < 0.5

    # 5. mechanism: the peak activation of the first neuron, read by a plain hook
    m0, c0 = names[0].rsplit(":", 1)
    got = {}
    h = dict(model.named_modules())[m0].register_forward_hook(lambda mod, a, out: got.update(y=out[0, :, int(c0)]))
    with torch.no_grad():
        model(input_ids=ids[None])
    h.remove()
    nd = secs["mechanism"]["data"]["neurons"][0]
    assert nd["max_abs"] == pytest.approx(float(got["y"].abs().max()), rel=1e-4)
    assert nd["position"] == int(got["y"].abs().argmax())
    att = secs["mechanism"]["data"]["attention"]
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(input_ids=ids[None], output_attentions=True)
    assert att["clean"] == pytest.approx([float(a[0, :, 1:, 0].mean()) for a in out.attentions], abs=1e-4)
    zero = secs["mechanism"]["data"]["zero_ablation"]
    assert zero == pytest.approx(hooked_log10_ratio(model, ids, names), abs=1e-3)

    # 6. generations: the masked continuations differ from the clean ones
    pairs = secs["generations"]["data"]["pairs"]
    assert all(p["clean"] != p["masked"] for p in pairs)
    # 4. stability: the default set is in the K row at K = 100
    k100 = next(r for r in secs["stability"]["data"]["rows"] if r["label"] == "K=100")
    assert k100["neurons"] == names and k100["jaccard"] == 1.0
    print("\n".join(f"[{v['verdict']}] {s['title']}: {v['claim']}. {v['detail']}"
                    for s in doc["sections"] for v in s["verdicts"]))
    assert by_module(names)
