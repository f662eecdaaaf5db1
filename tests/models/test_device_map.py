"""Models dispatched by accelerate (device_map): hooks, masks and accumulators follow each module's device.

On a CPU-only machine the split is "cpu" + "disk": disk-offloaded layers keep their parameters on the meta device
between forwards and accelerate reloads them from the offload folder at every call, so in-place masking must
not be used there (it would be lost or hit a temporary copy) and every tensor must come from the module's own
execution device.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import achilles_fast as af
from achilles_fast.method.masking import WeightMask, masked
from achilles_fast.models.registry import discover_targets
from conftest import ToyTokenizer, tiny_model

accelerate = pytest.importorskip("accelerate")

TEXT = "Once upon a time a small fox lived in the woods. It liked to sing, and the owls sang along. " * 2
KW = dict(k=4, alpha=1.0, epsilon=0.05, max_neurons=8, strategy="linear", batch_size=4, progress=False)


def _tiny(model_type: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_model(model_type, pad_token_id=0, initializer_range=0.2, num_local_experts=4, num_experts=4,
                          num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24)


def _device_map(model) -> dict:
    """Layer 1 and the (untied) LM head on disk, everything else on cpu."""
    dm = {name: "cpu" for name, _ in model.named_children()}
    base = model.base_model_prefix
    inner = getattr(model, base)
    dm.pop(base)
    for name, _ in inner.named_children():
        dm[f"{base}.{name}"] = "cpu"
    layers = next(n for n in ("layers", "h") if f"{base}.{n}" in dm)
    dm.pop(f"{base}.{layers}")
    for i in range(model.config.num_hidden_layers):
        dm[f"{base}.{layers}.{i}"] = "disk" if i == 1 else "cpu"
    # a tied head (GPT-2) stays with its embedding: accelerate unties an offloaded tied head after one forward
    dm["lm_head"] = "cpu" if model.config.tie_word_embeddings else "disk"
    return dm


def _dispatched(model_type: str, tmp_path):
    from accelerate import dispatch_model
    ref = _tiny(model_type)
    model = _tiny(model_type)  # same seed -> same weights
    model = dispatch_model(model, device_map=_device_map(model), main_device="cpu", offload_dir=str(tmp_path))
    return ref, model


def _offloaded_state(model, names):
    """Current values of the offloaded (meta) parameters as accelerate will load them: {name: tensor}."""
    out = {}
    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is None or not getattr(hook, "offload", False):
            continue
        for pname, _ in module.named_parameters(recurse=False):
            key = f"{name}.{pname}"
            wm = hook.weights_map
            out[key] = wm[pname].clone()
    return out


@pytest.mark.parametrize("model_type", ["llama", "qwen2_moe", "gpt2"])
def test_find_critical_matches_undispatched(model_type, tmp_path):
    ref, model = _dispatched(model_type, tmp_path)
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    assert any(".1." in n for n in meta), meta
    assert model.config.tie_word_embeddings or any(n.startswith("lm_head") for n in meta), meta
    before = _offloaded_state(model, meta)
    resident = {n: p.detach().clone() for n, p in model.named_parameters() if p.device.type != "meta"}
    tok = ToyTokenizer()
    r_ref = af.find_critical(ref, tok, TEXT, **KW)
    r = af.find_critical(model, tok, TEXT, **KW)
    assert [n.name for n in r.top_ranked] == [n.name for n in r_ref.top_ranked]
    assert [s.score for s in r.top_ranked] == pytest.approx([s.score for s in r_ref.top_ranked], rel=1e-4, abs=1e-6)
    assert [n for n, _ in r.curve] == [n for n, _ in r_ref.curve]
    assert [v for _, v in r.curve] == pytest.approx([v for _, v in r_ref.curve], abs=1e-4)
    assert r.clean_nll == pytest.approx(r_ref.clean_nll, abs=1e-5)
    # nothing changed: offloaded weights (as reloaded) and resident weights are bit-identical, meta stays meta
    after = _offloaded_state(model, meta)
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    for n, p in model.named_parameters():
        assert (p.device.type == "meta") == (n in meta), n
        if n in resident:
            assert torch.equal(p.detach(), resident[n]), n


def test_masking_offloaded_layer_uses_hooks_and_restores(tmp_path):
    """Masking channels of a disk-offloaded layer takes effect and leaves the offloaded copy untouched."""
    ref, model = _dispatched("llama", tmp_path)
    name = "model.layers.1.mlp.down_proj"
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    before = _offloaded_state(model, meta)
    ids = torch.tensor([[(7 * i + 3) % 97 for i in range(20)]])
    seen = {}
    t = next(t for t in discover_targets(model) if t.name == name)
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with masked(model, [f"{name}:3", f"{name}:9"]):
            h = t.register_forward_hook(lambda m, a, out: seen.__setitem__("y", out.detach().clone()))  # after the mask
            masked_logits = model(input_ids=ids).logits
            h.remove()
            assert torch.all(seen["y"][..., [3, 9]] == 0) and seen["y"][..., 4].abs().sum() > 0
        with masked(ref, [f"{name}:3", f"{name}:9"]):
            ref_logits = ref(input_ids=ids).logits
        again = model(input_ids=ids).logits
    torch.testing.assert_close(masked_logits, ref_logits, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(masked_logits, clean)
    assert torch.equal(again, clean)
    after = _offloaded_state(model, meta)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_weight_mask_restores_after_error_on_dispatched_model(tmp_path, monkeypatch):
    """An error half-way through in-place masking (after some targets were masked) restores them all."""
    from achilles_fast.method.ranking import Ranking
    _, model = _dispatched("qwen2_moe", tmp_path)
    targets = discover_targets(model)
    resident = {n: p.detach().clone() for n, p in model.named_parameters() if p.device.type != "meta"}
    ranking = Ranking.from_neurons(targets, [f"{t.name}:{c}" for t in targets[:3] for c in (0, 1)])

    def boom():
        raise RuntimeError("mask_params failed")

    import achilles_fast.ops as ops
    real, calls = ops.mask_channels_, []
    monkeypatch.setattr(ops, "mask_channels_", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(targets[2], "params", boom)
    with pytest.raises(RuntimeError, match="mask_params failed"):
        WeightMask(ranking).apply()
    assert calls, "nothing was masked in place before the error: the test would prove nothing"
    for n, p in model.named_parameters():
        if n in resident:
            assert torch.equal(p.detach(), resident[n]), n


STORY_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
             "model.layers.3": "disk", "model.layers.4": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
             "lm_head": "cpu"}


def test_load_model_with_device_map_real_weights(tmp_path):
    """stories260K loaded by from_pretrained(device_map=..., offload_folder=...) gives the same result."""
    from conftest import STORIES
    from achilles_fast.models.loading import load_model
    ref, tok, _ = load_model(str(STORIES))
    model, _, _ = load_model(str(STORIES), device_map=STORY_MAP, offload_folder=tmp_path)
    assert model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    kw = dict(KW, epsilon=0.2, max_neurons=16, max_tokens=64)
    r_ref = af.find_critical(ref, tok, **kw)
    r = af.find_critical(model, tok, **kw)
    assert [n.name for n in r.top_ranked] == [n.name for n in r_ref.top_ranked]
    assert [v for _, v in r.curve] == pytest.approx([v for _, v in r_ref.curve], abs=1e-4)
    assert any(".layers.1." in n.name or ".layers.3." in n.name for n in r.top_ranked)  # offloaded layers scored


def test_cli_device_map(tmp_path, capsys):
    import json
    from conftest import STORIES
    from achilles_fast.cli import main
    common = [str(STORIES), "--k", "3", "--max-neurons", "8", "--epsilon", "0.2", "--max-tokens", "48", "--quiet",
              "--strategy", "linear"]
    assert main(["find", *common, "--out", str(tmp_path / "a.json")]) in (0, 1)
    assert main(["find", *common, "--out", str(tmp_path / "b.json"), "--device-map", json.dumps(STORY_MAP),
                 "--offload-folder", str(tmp_path / "off")]) in (0, 1)
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert [n["name"] for n in a["top_ranked"]] == [n["name"] for n in b["top_ranked"]]
    assert main(["find", *common, "--device-map", "{not json"]) == 2
    assert "--device-map" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["cpu_offload", "disk_offload"])
def test_whole_model_offload(how, tmp_path):
    """accelerate.cpu_offload / disk_offload (every weight on meta, reloaded per module) give the same result."""
    from accelerate import cpu_offload, disk_offload
    ref, model = _tiny("qwen2_moe"), _tiny("qwen2_moe")
    cpu = torch.device("cpu")
    if how == "cpu_offload":
        cpu_offload(model, execution_device=cpu)
    else:
        disk_offload(model, str(tmp_path), execution_device=cpu)
    assert all(p.device.type == "meta" for p in model.parameters())
    tok = ToyTokenizer()
    r_ref, r = af.find_critical(ref, tok, TEXT, **KW), af.find_critical(model, tok, TEXT, **KW)
    assert [n.name for n in r.top_ranked] == [n.name for n in r_ref.top_ranked]
    assert [v for _, v in r.curve] == pytest.approx([v for _, v in r_ref.curve], abs=1e-4)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing left materialised


def test_resolve_model_takes_every_loader_option(tmp_path):
    """resolve_model (the one resolver of API, study and CLI) passes device_map (a dict or the CLI's JSON string),
    offload_folder and the rest to load_model; a model object refuses loader options in one line."""
    import json
    from conftest import STORIES
    from achilles_fast.models.loading import resolve_model
    model, tok, name = resolve_model(str(STORIES), device_map=json.dumps(STORY_MAP), offload_folder=tmp_path)
    assert model.model.layers[1].mlp.down_proj.weight.device.type == "meta" and tok is not None
    assert name == str(STORIES.resolve()) and model.achilles_source["name"] == name
    with pytest.raises(ValueError, match="device_map entry 'x': device 'tpu9' is not a device"):
        resolve_model(str(STORIES), device_map='{"x": "tpu9"}')
    with pytest.raises(ValueError, match="not a JSON object"):
        resolve_model(str(STORIES), device_map="{not json")
    same, tok2, name2 = resolve_model(model, tok)
    assert same is model and tok2 is tok and name2 == name
    with pytest.raises(ValueError, match="^device_map, gguf_file: loader options apply to a model spec"):
        resolve_model(model, tok, device_map="auto", gguf_file="x.gguf")
