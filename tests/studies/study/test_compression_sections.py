"""The study sections quantization, pruning and bitflips: every number recomputed independently on stories260K
(plain-PyTorch RTN, pruning and int8 flips on deep copies), the model bit-identical after the study and after an
exception or Ctrl-C injected while the weights are compressed / flipped."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from compression_refs import block_linears, keep_masks, ref_flip, ref_int8, ref_norms, ref_prune, ref_rtn, stories_ids
from conftest import assert_bit_identical, hooked_nll, weights_snapshot

LN10 = math.log(10)


# ---- the study sections ------------------------------------------------------------------------------------------
CFG = dict(k=8, max_tokens=64, epsilon=0.05, max_neurons=60)
SECTIONS = "quantization,pruning,bitflips"


def section_params(**kw):
    from achilles_fast.studies.study import StudyParams
    return StudyParams(**{**dict(bits=(8, 4, 3), group_size=16, sparsities=(0.5, 0.7), flip_max=4, flip_candidates=6,
                                 flip_trials=100), **kw})


@pytest.fixture(scope="module")
def compression_study(stories, tmp_path_factory):
    from achilles_fast.studies.study import study
    model, tok = stories
    snap = weights_snapshot(model)
    out = tmp_path_factory.mktemp("cstudy")
    doc = study(model, tok, out=out, sections=SECTIONS, study_params=section_params(), progress=False, **CFG)
    assert_bit_identical(model, snap)
    return model, stories_ids(tok), {s["name"]: s for s in doc["sections"]}, out


def test_quantization_section_numbers(compression_study):
    model, ids, secs, _ = compression_study
    d = secs["quantization"]["data"]
    clean = hooked_nll(model, ids)
    assert [(r["bits"], r["protect"]) for r in d["rows"]] == [(b, m) for b in (8, 4, 3)
                                                              for m in ("none", "critical", "random")]
    assert len(d["random"]) == len(d["critical"]) > 0
    for r in d["rows"]:
        ref = copy.deepcopy(model)
        keeps = keep_masks(ref, {"none": [], "critical": d["critical"], "random": d["random"]}[r["protect"]])
        for name, m, dim in block_linears(ref):
            with torch.no_grad():
                m.weight.copy_(ref_rtn(m.weight, r["bits"], 16, dim, keeps.get(name)))
        nll = hooked_nll(ref, ids)
        assert r["kept"] == sum(int(k.sum()) for k in keeps.values())
        assert r["log10_ppl"] == pytest.approx(nll / LN10, abs=1e-4)
        assert r["log10_ratio"] == pytest.approx((nll - clean) / LN10, abs=1e-4)
    assert {v["verdict"] for v in secs["quantization"]["verdicts"]} <= {"holds", "does not hold", "not applicable"}


def test_pruning_section_numbers(compression_study):
    model, ids, secs, _ = compression_study
    d = secs["pruning"]["data"]
    clean = hooked_nll(model, ids)
    norms = ref_norms(model, ids)
    assert len(d["rows"]) == 2 * 2 * 3
    for r in d["rows"]:
        ref = copy.deepcopy(model)
        keeps = keep_masks(ref, {"none": [], "critical": d["critical"], "random": d["random"]}[r["protect"]])
        for name, m, dim in block_linears(ref):
            pr = ref_prune(m.weight, r["sparsity"], r["method"], dim, norms[name], keeps.get(name))
            with torch.no_grad():
                m.weight[pr] = 0
        nll = hooked_nll(ref, ids)
        assert r["log10_ratio"] == pytest.approx((nll - clean) / LN10, abs=1e-4), r


def test_bitflips_section_numbers(compression_study):
    model, ids, secs, _ = compression_study
    b = secs["bitflips"]
    d = b["data"]
    assert any("Floats are not searched" in m for m in b["measured"])
    ref = copy.deepcopy(model)
    rst = ref_int8(ref)
    base = hooked_nll(ref, ids)
    assert d["int8_log10_ppl"] == pytest.approx(base / LN10, abs=1e-4)
    crit_rows = {(n.rsplit(":", 1)[0] + ".weight", int(n.rsplit(":", 1)[1])) for n in d["critical"]}
    for f, r in zip(d["flips"], d["ratios"]):
        assert (f["tensor"], f["index"][0]) in crit_rows and f["bit"] == 7
        assert ref_flip(ref, rst, f["tensor"], f["index"], f["bit"]) == (f["before"], f["after"])
        assert (hooked_nll(ref, ids) - base) / LN10 == pytest.approx(r, abs=1e-4)
    if d["flips"]:
        assert d["replayed_log10_ratio"] == pytest.approx(d["ratios"][-1], abs=1e-9)
    assert d["reached"] == (bool(d["ratios"]) and d["ratios"][-1] >= d["epsilon"])
    assert len(d["random"]) >= 100
    bits = [f["bit"] for f in d["flips"]] or [7]
    assert all([f["bit"] for f in t["flips"]] == bits for t in d["random"])
    assert d["random_reaching"] == sum(t["log10_ratio"] >= d["epsilon"] for t in d["random"])
    for t in d["random"][:3]:
        ref2 = copy.deepcopy(model)
        rst2 = ref_int8(ref2)
        for f in t["flips"]:
            assert ref_flip(ref2, rst2, f["tensor"], f["index"], f["bit"]) == (f["before"], f["after"])
        assert (hooked_nll(ref2, ids) - base) / LN10 == pytest.approx(t["log10_ratio"], abs=1e-4)


def test_sections_in_report(compression_study):
    *_, secs, out = compression_study
    md = (out / "report.md").read_text()
    for s in ("quantization", "pruning", "bitflips"):
        assert secs[s]["verdicts"] and secs[s]["tables"]
        assert (out / "figures" / f"{s}.png").is_file()
    assert "Quantisation" in md and "Bit flips" in md and "Pruning" in md


@pytest.mark.parametrize("section,calls", [("quantization", 2), ("pruning", 4), ("bitflips", 3)])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_section_restores_on_exception(section, calls, exc, compression_study, stories, tmp_path, monkeypatch):
    """An exception (or Ctrl-C) injected while the weights are compressed / flipped: bit-identical afterwards.
    (The fixture's study.json gives the critical set; other grids make the sections run again.)"""
    import importlib
    import shutil
    from achilles_fast.studies.study import study
    mod = importlib.import_module(f"achilles_fast.studies.study.sections.{section}")
    shutil.copy(compression_study[-1] / "study.json", tmp_path / "study.json")
    model, tok = stories
    snap = weights_snapshot(model)
    real, seen = mod.nll_now, []

    def boom(ctx):
        seen.append(1)
        if len(seen) >= calls:
            assert any(not torch.equal(p, snap[n]) for n, p in model.named_parameters())  # raised mid-edit
            raise exc()
        return real(ctx)

    monkeypatch.setattr(mod, "nll_now", boom)
    with pytest.raises(exc):
        study(model, tok, sections=section, out=tmp_path, progress=False, **CFG,
              study_params=section_params(bits=(8, 3), sparsities=(0.6,), flip_trials=101))
    assert len(seen) == calls
    assert_bit_identical(model, snap)
