"""Every registered family: tiny random model -> targets, exact channel masking, find_critical end to end."""
from __future__ import annotations

import re
import warnings

import pytest
import torch

import achilles_fast as af
from achilles_fast.method.masking import BatchedMask, masked
from achilles_fast.method.ranking import Ranking
from achilles_fast.models.neurons import Neuron
from achilles_fast.models.registry import UnsupportedModelError, discover_targets, get_family
from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

TEXT = "Once upon a time a small fox lived in the woods. It liked to sing, and the owls sang along. " * 2
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=24, decoder_sparse_step=1, mlp_only_layers=[])

# family -> (model_type, expected down projection path inside a layer, expected layout of that target)
FAMILIES = {
    "llama": ("llama", "mlp.down_proj", "linear"),
    "mistral": ("mistral", "mlp.down_proj", "linear"),
    "qwen2": ("qwen2", "mlp.down_proj", "linear"),
    "qwen3": ("qwen3", "mlp.down_proj", "linear"),
    "gemma": ("gemma", "mlp.down_proj", "linear"),
    "gemma2": ("gemma2", "mlp.down_proj", "linear"),
    "gemma3": ("gemma3_text", "mlp.down_proj", "linear"),
    "phi3": ("phi3", "mlp.down_proj", "linear"),
    "gpt2": ("gpt2", "mlp.c_proj", "conv1d"),
    "gpt_neox": ("gpt_neox", "mlp.dense_4h_to_h", "linear"),
    "opt": ("opt", "fc2", "linear"),
    "mixtral": ("mixtral", None, "expert"),
    "qwen2_moe": ("qwen2_moe", None, "expert"),
    "qwen3_moe": ("qwen3_moe", None, "expert"),
}


def _build(model_type: str, seed: int = 0):
    from transformers import CONFIG_MAPPING
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no {model_type!r} model in this version")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_model(model_type, seed=seed, pad_token_id=0, initializer_range=0.2, **MOE)


def _outputs(model, targets, ids):
    """Forward ids [1, T]; -> {target name: its output [B*T or B, T, C] (detached clone)}."""
    got, handles = {}, []
    for t in targets:
        handles.append(t.register_forward_hook(
            lambda m, a, out, t=t: got.__setitem__(t.name, t.output(out).detach().clone())))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


def _picks(targets, per_target=2):
    """A few (target, channels) to mask: the first and last targets in scan order, and up to two with a special
    layout (hook-masked norm, Conv1D, MoE expert)."""
    chosen = [targets[0], targets[-1]]
    chosen += [t for t in targets if t.layout in ("hook", "conv1d", "expert")][:2]
    seen, out = set(), []
    for t in chosen:
        if t.name in seen:
            continue
        seen.add(t.name)
        out.append((t, sorted({1, t.num_channels - 2})[:per_target]))
    return out


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model_type, down, layout = FAMILIES[request.param]
    return request.param, _build(model_type), down, layout


def test_registry_targets(family):
    name, model, down, layout = family
    assert get_family(model.config.model_type) is not None
    targets = discover_targets(model)
    layers = model.config.num_hidden_layers
    downs = [t for t in targets if t.layout == layout]
    assert {t.layer for t in downs} == set(range(layers)), [t.name for t in targets]
    if layout == "expert":  # transformers 5: <experts>.<e>.down_proj (virtual); 4: the real expert module
        assert all(re.search(r"\.experts\.\d+\.(down_proj|w2)$", t.name) for t in downs), [t.name for t in downs]
        assert len(downs) == layers * 4  # one target per expert
        assert downs[0].num_channels == model.config.hidden_size
    else:
        assert all(t.name.endswith(f".{down}") for t in downs)
    all_t = discover_targets(model, "all")
    assert {t.name for t in targets} <= {t.name for t in all_t}
    assert len({t.name for t in all_t}) == len(all_t)


def test_masking_hits_exactly_named_channels(family):
    """Masking one target's channels zeroes exactly those channels of its output, leaves the rest bit-exact."""
    name, model, down, layout = family
    snap = weights_snapshot(model)
    targets = discover_targets(model, "all")
    ids = torch.tensor([[(7 * i + 3) % 97 for i in range(24)]])
    clean = _outputs(model, targets, ids)
    for t, chans in _picks(targets):
        neurons = [f"{t.name}:{c}" for c in chans]
        with masked(model, neurons):
            if t.layout == "hook":  # e.g. Gemma's (1 + w) RMSNorm: weights must not be touched
                assert_bit_identical(model, snap)
            got = _outputs(model, [t], ids)[t.name]
        ref = clean[t.name]
        keep = torch.ones(ref.shape[-1], dtype=torch.bool)
        keep[chans] = False
        assert torch.all(got[..., chans] == 0), (t.name, chans)
        assert torch.equal(got[..., keep], ref[..., keep]), f"{t.name}: other channels changed"
        assert ref[..., chans].abs().sum() > 0, f"{t.name}: masked channels were already zero"
        assert_bit_identical(model, snap)


def test_batched_mask_matches_in_place(family):
    """BatchedMask (hooks, per batch element) gives the in-place masked outputs for its element, clean for others."""
    name, model, down, layout = family
    snap = weights_snapshot(model)
    targets = discover_targets(model)
    ids = torch.tensor([[(5 * i + 1) % 97 for i in range(16)]])
    t, chans = _picks(targets)[-1]
    neurons = [Neuron(t.name, c, t.layer, t.kind) for c in chans]
    with torch.no_grad():
        clean = model(input_ids=ids, use_cache=False).logits[0]  # [T, V]
        with masked(model, neurons):
            inplace = model(input_ids=ids, use_cache=False).logits[0]
        with BatchedMask(Ranking.from_neurons(targets, neurons)) as bm:
            bm.set_prefixes([len(neurons), 0])
            both = model(input_ids=ids.repeat(2, 1), use_cache=False).logits  # [2, T, V]
    assert not torch.allclose(clean, inplace, atol=1e-6), "masking had no effect on the logits"
    torch.testing.assert_close(both[0], inplace, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1], clean, rtol=1e-4, atol=1e-5)
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("scope", ["down_proj", "all"])
def test_find_critical_end_to_end(family, scope):
    """Both stages run; the Stage 2 curve agrees with in-place masking of the reported prefix."""
    name, model, down, layout = family
    if scope == "all" and name not in ("llama", "gemma2", "gpt2", "qwen2_moe"):
        pytest.skip("scope='all' end to end on a representative subset (time budget)")
    snap = weights_snapshot(model)
    tok = ToyTokenizer()
    r = af.find_critical(model, tok, TEXT, k=4, alpha=1.0, epsilon=0.05, max_neurons=8, scope=scope,
                         strategy="linear", batch_size=4, progress=False)
    assert_bit_identical(model, snap)
    assert r.top_ranked and r.curve
    names = {t.name for t in discover_targets(model, scope)}
    assert {n.module for n in r.top_ranked} <= names
    n, lr = r.curve[-1]
    ev = af.evaluate_mask(model, tok, [x.name for x in r.top_ranked[:n]], TEXT)
    assert ev["log10_ratio"] == pytest.approx(lr, abs=1e-4)
    assert_bit_identical(model, snap)


def test_moe_expert_masking_zeroes_the_expert_slice():
    """In-place masking of expert e, channels c zeroes exactly those rows of e's down weight; exact restore."""
    model = _build("qwen3_moe")
    snap = weights_snapshot(model)
    t = [t for t in discover_targets(model) if t.layer == 1 and t.layout == "expert"][2]
    w, _, dim = t.mask_params()  # transformers 5: view [H, I] of the fused [E, H, I]; 4: the expert's Linear
    with masked(model, [f"{t.name}:5", f"{t.name}:7"]):
        assert torch.all(w.index_select(dim, torch.tensor([5, 7])) == 0)
        changed = sum(int((p.detach() != snap[n]).sum()) for n, p in model.named_parameters())
        assert 0 < changed <= 2 * w.shape[1 - dim]
    assert_bit_identical(model, snap)


def _moe_block(layer):
    return getattr(layer, "block_sparse_moe", None) or layer.mlp


def test_moe_expert_contributions_sum_to_block_output():
    """The per-expert outputs used for scoring add up to the MoE block's output (Mixtral: no shared expert)."""
    model = _build("mixtral")
    targets = [t for t in discover_targets(model) if t.layer == 0]
    ids = torch.tensor([[(3 * i + 2) % 97 for i in range(20)]])
    got = _outputs(model, targets, ids)
    block = {}
    h = _moe_block(model.model.layers[0]).register_forward_hook(
        lambda m, a, out: block.update(y=(out[0] if isinstance(out, tuple) else out).clone()))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    h.remove()
    total = sum(got[t.name] for t in targets)  # [T, H]
    torch.testing.assert_close(total, block["y"].reshape(total.shape), rtol=1e-5, atol=1e-6)
    assert sum(int((got[t.name].abs().sum(-1) > 0).sum()) for t in targets) == 2 * ids.shape[1]  # top-2 routing


def test_unknown_family_error_and_opt_in_discovery():
    model = _build("llama")
    model.config.model_type = "my_new_arch"
    with pytest.raises(UnsupportedModelError, match="register_family.*discover"):
        discover_targets(model)
    with pytest.warns(UserWarning, match="guessed 3"):
        targets = discover_targets(model, allow_discovery=True)
    assert [t.name for t in targets] == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    snap = weights_snapshot(model)
    with pytest.warns(UserWarning, match="not in the achilles_fast registry"):
        r = af.find_critical(model, ToyTokenizer(), TEXT, k=2, max_neurons=4, epsilon=0.05, discover=True,
                             progress=False)
    assert r.top_ranked[0].module.endswith("mlp.down_proj")
    assert_bit_identical(model, snap)


def test_discovery_knows_conv1d():
    model = _build("gpt2")
    model.config.model_type = "gpt2_fork"
    with pytest.warns(UserWarning):
        targets = discover_targets(model, allow_discovery=True)
    assert [t.layout for t in targets] == ["conv1d"] * 3
    assert all(t.name.endswith("mlp.c_proj") for t in targets)


def test_multimodal_gemma3_scans_the_language_model_only():
    """Gemma-3 checkpoints with a vision tower: a text-only forward never runs it, so it is not scanned."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    cfg = AutoConfig.for_model("gemma3")
    for k, v in dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, vocab_size=97).items():
        setattr(cfg.text_config, k, v)
    for k, v in dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                     image_size=28, patch_size=14).items():
        setattr(cfg.vision_config, k, v)
    cfg.mm_tokens_per_image = 4
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForImageTextToText.from_config(cfg).eval()
    targets = discover_targets(model, "all")
    assert targets and all("vision" not in t.name for t in targets)
    assert {t.layer for t in targets if t.kind == "mlp.down_proj"} == {0, 1}
    snap = weights_snapshot(model)
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=2, max_neurons=4, epsilon=0.05, scope="all", progress=False)
    assert r.top_ranked
    assert_bit_identical(model, snap)


def test_moe_with_dense_layers():
    """Qwen2-MoE with a dense MLP layer: that layer's down_proj, and experts + shared expert elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model("qwen2_moe", pad_token_id=0, initializer_range=0.2, **dict(MOE, mlp_only_layers=[1]))
    by_layer = {}
    for t in discover_targets(model):
        by_layer.setdefault(t.layer, []).append(t.kind)
    assert by_layer[1] == ["mlp.down_proj"]
    assert by_layer[0] == by_layer[2] == ["moe.expert.down_proj"] * 4 + ["moe.shared_expert.down_proj"]
    snap = weights_snapshot(model)
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=2, max_neurons=6, epsilon=0.05, progress=False)
    assert r.curve
    assert_bit_identical(model, snap)


def test_cli_discover_flag(tmp_path, capsys):
    """`achilles-fast find DIR --discover` on a checkpoint whose model_type has no registry entry."""
    import json
    import shutil
    from conftest import STORIES
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from achilles_fast.cli import main

    class ForkConfig(LlamaConfig):
        model_type = "achilles_test_fork"

    class ForkForCausalLM(LlamaForCausalLM):
        config_class = ForkConfig

    AutoConfig.register("achilles_test_fork", ForkConfig, exist_ok=True)
    AutoModelForCausalLM.register(ForkConfig, ForkForCausalLM, exist_ok=True)
    cfg = ForkConfig(**{k: v for k, v in json.loads((STORIES / "config.json").read_text()).items()
                        if k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    ForkForCausalLM(cfg).save_pretrained(tmp_path / "fork")
    for f in STORIES.glob("tokenizer*"):
        shutil.copy(f, tmp_path / "fork" / f.name)
    args = ["find", str(tmp_path / "fork"), "--k", "2", "--max-neurons", "4", "--max-tokens", "32", "--quiet"]
    assert main(args) == 2
    assert "registry" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="guessed 5 MLP down projection"):
        assert main([*args, "--discover", "--out", str(tmp_path / "r.json")]) in (0, 1)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["top_ranked"] and all(n["module"].endswith("mlp.down_proj") for n in r["top_ranked"])
