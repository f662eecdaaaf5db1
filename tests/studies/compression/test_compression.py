"""Compression ops recomputed independently: plain-PyTorch RTN, pruning and int8 bit flips on deep copies
(per-row / per-group loops, Python sorts), protect lists against what in-place masking changes; exact restore after
every call, also when it raises or is interrupted."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from compression_refs import block_linears, keep_masks, model_ids, ref_flip, ref_int8, ref_norms, ref_prune, ref_rtn, \
    stories_ids
from conftest import assert_bit_identical, hooked_nll, tiny_model, weights_snapshot

from achilles_fast import masked, protect_list
from achilles_fast.models.registry import discover_targets, maskable_targets
from achilles_fast.studies.compression import CompressionError, int8_model, pruned, quantized, replay_flips, rtn
from achilles_fast.studies.compression.activations import input_norms
from achilles_fast.studies.compression.bitflips import critical_candidates, flip_code, greedy_flips, random_trials
from achilles_fast.studies.compression.prune import prune_mask
from achilles_fast.studies.compression.protect import random_down_proj
from achilles_fast.studies.compression.weights import block_weights

LN10 = math.log(10)
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=16, decoder_sparse_step=1, mlp_only_layers=[])


# ---- RTN ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (3, 16), (2, 7)])
def test_rtn_equals_plain_loops(bits, group):
    torch.manual_seed(bits)
    w = torch.randn(9, 50) * torch.rand(9, 1) * 3
    w[2] = 0  # an all-zero channel: scale 1, codes 0
    keep = torch.rand(9, 50) < 0.1
    for dim in (0, 1):
        ww = w if dim == 0 else w.t().contiguous()
        kk = keep if dim == 0 else keep.t().contiguous()
        assert torch.equal(rtn(ww, bits, group, dim), ref_rtn(ww, bits, group, dim))
        got = rtn(ww, bits, group, dim, kk)
        assert torch.equal(got, ref_rtn(ww, bits, group, dim, kk))
        assert torch.equal(got[kk], ww[kk])  # protected values kept exactly
        q = 2 ** (bits - 1) - 1
        row = (got if dim == 0 else got.t())[0][~(kk if dim == 0 else kk.t())[0]]
        assert row.unique().numel() <= (2 * q + 1) * math.ceil(50 / (group or 50))


@pytest.mark.parametrize("family", ["stories", "llama", "gpt2"])
def test_quantized_model_equals_reference(family, request):
    model, ids = model_ids(family, request)
    snap = weights_snapshot(model)
    down = discover_targets(model, "down_proj")[1]
    names = [f"{down.name}:1", f"{down.name}:4"]
    pl = protect_list(model, names)
    for bits, group in ((4, None), (3, 16)):
        ref = copy.deepcopy(model)
        keeps = keep_masks(ref, names)
        for name, m, dim in block_linears(ref):
            with torch.no_grad():
                m.weight.copy_(ref_rtn(m.weight, bits, group, dim, keeps.get(name)))
        with quantized(model, bits, group, pl) as kept:
            assert kept == sum(int(k.sum()) for k in keeps.values())
            for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                assert torch.equal(p, q), name
            got = hooked_nll(model, ids)
        assert got == pytest.approx(hooked_nll(ref, ids), abs=1e-6)
        assert_bit_identical(model, snap)


# ---- pruning -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_prune_mask_equals_python_sort(method):
    torch.manual_seed(1)
    w = torch.randn(7, 30)
    w[0, :5] = 0.5  # ties
    norm = torch.rand(30) + 0.1
    keep = torch.zeros(7, 30, dtype=torch.bool)
    keep[3] = True  # a fully protected channel
    keep[5, ::3] = True
    for s in (0.5, 0.7, 0.97):
        for dim in (0, 1):
            ww, kk = (w, keep) if dim == 0 else (w.t().contiguous(), keep.t().contiguous())
            got = prune_mask(ww, s, method, dim, norm, kk)
            assert torch.equal(got, ref_prune(ww, s, method, dim, norm, kk))
            assert not bool((got & kk).any())


@pytest.mark.parametrize("family", ["stories", "gpt2"])
def test_pruned_model_equals_reference(family, request):
    model, ids = model_ids(family, request)
    snap = weights_snapshot(model)
    norms = input_norms(model, ids, block_weights(model))
    rnorms = ref_norms(model, ids)
    assert set(norms) == set(rnorms)
    for k in norms:
        torch.testing.assert_close(norms[k], rnorms[k], rtol=1e-5, atol=1e-6)
    names = random_down_proj(model, 3, seed=2)
    pl = protect_list(model, names)
    for method, s in (("magnitude", 0.5), ("wanda", 0.7)):
        ref = copy.deepcopy(model)
        keeps = keep_masks(ref, names)
        zeroed = total = 0
        for name, m, dim in block_linears(ref):
            pr = ref_prune(m.weight, s, method, dim, rnorms[name], keeps.get(name))
            zeroed, total = zeroed + int(pr.sum()), total + pr.numel()
            with torch.no_grad():
                m.weight[pr] = 0
        with pruned(model, s, method, pl, norms) as frac:
            assert frac == pytest.approx(zeroed / total)
            for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                assert torch.equal(p, q), name
        assert_bit_identical(model, snap)


# ---- protect lists -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3_moe", "gemma3_text"])
def test_protect_list_is_what_masking_zeroes(family):
    """For every target layout with weights (Linear rows, Conv1D columns + bias, fused expert slices, producers of
    activations), the protect list is exactly the set of values in-place masking changes; Gemma's norms (hook
    layout): the weight entry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model(family, pad_token_id=0, initializer_range=0.2, **MOE)
    snap = weights_snapshot(model)
    targets = maskable_targets(model)
    for t in targets:
        if t.layout == "hook":
            if family != "gemma3_text" or "norm" not in t.kind or "attn" in t.kind:
                continue
            pl = protect_list(model, [f"{t.name}:3"])
            (name, m), = pl.masks.items()
            assert name == f"{t.name}.weight" and m.shape == t.module.weight.shape
            assert m.nonzero().flatten().tolist() == [3]
            continue
        names = [f"{t.name}:1", f"{t.name}:{t.num_channels - 2}"]
        pl = protect_list(model, names)
        with masked(model, names):
            changed = {n: (p.detach() != snap[n]) for n, p in model.named_parameters()}
        changed = {n: c for n, c in changed.items() if bool(c.any())}
        assert set(changed) <= set(pl.masks), t.name
        for n, m in pl.masks.items():
            assert m.dtype == torch.bool and m.shape == dict(model.named_parameters())[n].shape
            assert torch.equal(m, changed.get(n, torch.zeros_like(m)) | (m & (snap[n] == 0))), (t.name, n)
            assert int(m.sum()) > 0
    assert_bit_identical(model, snap)
    if family == "qwen3_moe":
        t = next(t for t in targets if t.layout == "expert")
        pl = protect_list(model, [f"{t.name}:5"])
        (e := pl.entries[0]["weights"][0])
        assert "slice" in e and e["slice"].startswith(f"[{t.name.split('.')[-2]}, ")


def test_protect_list_json_and_errors(stories, tmp_path):
    model, _ = stories
    pl = protect_list(model, ["model.layers.2.mlp.down_proj:5", "model.layers.1.mlp.act_fn:3",
                              "model.layers.0.input_layernorm:7"], out=tmp_path / "p.safetensors")
    from safetensors.torch import load_file
    import json
    saved = load_file(str(tmp_path / "p.safetensors"))
    assert set(saved) == set(pl.masks) and all(torch.equal(saved[k], pl.masks[k]) for k in saved)
    d = json.loads((tmp_path / "p.json").read_text())
    w = {e["neuron"]: e["weights"] for e in d["neurons"]}
    assert w["model.layers.2.mlp.down_proj:5"] == [{"weight": "model.layers.2.mlp.down_proj.weight",
                                                   "shape": [64, 172], "rows": [5]}]
    assert w["model.layers.1.mlp.act_fn:3"][0]["weight"] == "model.layers.1.mlp.gate_proj.weight"
    assert w["model.layers.0.input_layernorm:7"][0]["entries"] == [7]
    assert d["protected_values"] == 172 + 64 + 1
    with pytest.raises(CompressionError, match="empty"):
        protect_list(model, [])
    with pytest.raises(KeyError, match="no scannable module"):
        protect_list(model, ["model.layers.9.mlp.down_proj:1"])


# ---- parameters --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True])
def test_bad_bits(bits, stories):
    model, _ = stories
    snap = weights_snapshot(model)
    with pytest.raises(CompressionError, match="bits"):
        with quantized(model, bits):
            pass
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.1, float("nan"), "0.5"])
def test_bad_sparsity(sparsity, stories):
    model, _ = stories
    with pytest.raises(CompressionError, match="sparsity"):
        with pruned(model, sparsity):
            pass


# ---- int8 bit flips ----------------------------------------------------------------------------------------------
def test_flip_code_is_twos_complement_xor():
    for code in range(-128, 128):
        for bit in range(8):
            u = torch.tensor([code], dtype=torch.int8).view(torch.uint8) ^ (1 << bit)
            assert flip_code(code, bit) == int(u.view(torch.int8))
    with pytest.raises(CompressionError):
        flip_code(3, 8)


@pytest.mark.parametrize("family", ["stories", "gpt2"])
def test_int8_flips_and_replay_equal_reference(family, request):
    model, ids = model_ids(family, request)
    snap = weights_snapshot(model)
    down = discover_targets(model, "down_proj")[-1]
    pl = protect_list(model, [f"{down.name}:2", f"{down.name}:6"])
    norms = input_norms(model, ids, block_weights(model))
    ref = copy.deepcopy(model)
    rst = ref_int8(ref)
    ref_base = hooked_nll(ref, ids)
    with int8_model(model) as st:
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert torch.equal(p, q), name
        base = hooked_nll(model, ids)
        assert base == pytest.approx(ref_base, abs=1e-6)
        cands = critical_candidates(st, pl, norms)
        wname = f"{down.name}.weight"
        # bit 7 first; inside a bit, the largest input norm first; only the protected channels
        assert [b for *_, b in cands] == sorted((b for *_, b in cands), reverse=True)
        dim = 1 if family == "gpt2" else 0
        first = [idx for n, idx, b in cands if b == 7]
        vals = [float(norms[n][idx[1 - dim]]) for n, idx, b in cands if b == 7]
        assert vals == sorted(vals, reverse=True)
        assert {idx[dim] for idx in first} == {2, 6} and len(first) == 2 * norms[wname].numel()
        found = greedy_flips(st, cands, lambda: (hooked_nll(model, ids) - base) / LN10, 10.0, 3, 4)
        assert len(found.flips) <= 3 and found.evaluations <= 12
        for f, r in zip(found.flips, found.ratios):
            before, after = ref_flip(ref, rst, f.tensor, f.index, f.bit)
            assert (f.before, f.after) == (before, after) and f.bit == 7
            assert f.weight_after == float(dict(ref.named_parameters())[f.tensor].detach()[f.index])
            assert (hooked_nll(ref, ids) - ref_base) / LN10 == pytest.approx(r, abs=1e-6)
        flips = list(found.flips)
        for f in reversed(flips):  # back to the plain int8 model
            st.undo(f)
        assert hooked_nll(model, ids) == base
        trials = random_trials(st, [7, 3], 5, lambda: (hooked_nll(model, ids) - base) / LN10, seed=1)
        assert [[g["bit"] for g in t["flips"]] for t in trials] == [[7, 3]] * 5
    assert_bit_identical(model, snap)
    # a random trial recomputed on a fresh reference int8 copy
    ref2 = copy.deepcopy(model)
    rst2 = ref_int8(ref2)
    b2 = hooked_nll(ref2, ids)
    for f in trials[0]["flips"]:
        assert ref_flip(ref2, rst2, f["tensor"], f["index"], f["bit"]) == (f["before"], f["after"])
    assert (hooked_nll(ref2, ids) - b2) / LN10 == pytest.approx(trials[0]["log10_ratio"], abs=1e-6)
    # replay: the same weights as the search left, and a wrong record refused
    if flips:
        with replay_flips(model, [f.to_dict() for f in flips]):
            for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                assert torch.equal(p, q), name
        bad = dict(flips[0].to_dict(), before=flips[0].before + 1)
        with pytest.raises(CompressionError, match="record says"):
            with replay_flips(model, [bad]):
                pass
    assert_bit_identical(model, snap)


# ---- exact restore when interrupted -----------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_restore_on_exception(exc, stories):
    model, tok = stories
    snap = weights_snapshot(model)
    norms = input_norms(model, stories_ids(tok), block_weights(model))
    pl = protect_list(model, ["model.layers.2.mlp.down_proj:5"])
    for ctx in (lambda: quantized(model, 3, 16, pl), lambda: pruned(model, 0.5, "wanda", pl, norms),
                lambda: int8_model(model), lambda: replay_flips(model, [])):
        with pytest.raises(exc):
            with ctx() as st:
                if hasattr(st, "flip"):
                    st.flip("model.layers.1.mlp.down_proj.weight", (3, 4), 7)
                assert not torch.equal(dict(model.named_parameters())["model.layers.1.mlp.down_proj.weight"],
                                       snap["model.layers.1.mlp.down_proj.weight"])
                raise exc()
        assert_bit_identical(model, snap)
