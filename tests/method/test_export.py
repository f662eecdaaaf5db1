"""save_masked: a plain HF checkpoint with the channels zeroed in the weights, on every registered family."""
from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

import achilles_fast as af
from achilles_fast.method.export import OutputExistsError, save_masked
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.method.text import tokenize
from achilles_fast.models.registry import get_family, maskable_targets
from conftest import assert_bit_identical, tiny_model, weights_snapshot

TEXT = "Once upon a time a small fox lived in the woods. It liked to sing, and the owls sang along. " * 2
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=24, decoder_sparse_step=1, mlp_only_layers=[])
MODEL_TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox",
               "opt", "mixtral", "qwen2_moe", "qwen3_moe"]


def char_tokenizer():
    """A real (saveable) HF tokenizer for the tiny models: one token per printable ASCII character, 97 ids."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "</s>": 1, **{chr(c): c - 30 for c in range(32, 127)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>")


def _build(model_type):
    from transformers import CONFIG_MAPPING
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no {model_type!r} model in this version")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model(model_type, pad_token_id=0, initializer_range=0.2, **MOE)
    cfg = model.config  # tiny_model shrinks num_hidden_layers after the config made its per-layer list
    if getattr(cfg, "layer_types", None):  # (which save_pretrained validates): keep the layers' own entries
        cfg.layer_types = cfg.layer_types[:cfg.num_hidden_layers]
    return model


def _names(model):
    """Channels of the first and last down projections and of up to two special-layout targets (hook-masked
    norms, Conv1D, MoE experts)."""
    # exportable ones: per-head q/k norms (scope "paper") are masked by hooks only
    targets = [t for t in maskable_targets(model) if t.mask_params() is not None or t.export_fill is not None]
    chosen = [targets[0], targets[-1]] + [t for t in targets if t.layout in ("hook", "conv1d", "expert")][:2]
    names = []
    for t in dict.fromkeys(chosen):
        names += [f"{t.name}:{c}" for c in sorted({min(1, t.num_channels - 1), max(0, t.num_channels - 2)})]
    return names, {t.layout for t in chosen}


def _reload(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_round_trip_every_family(model_type, tmp_path):
    model, tok = _build(model_type), char_tokenizer()
    names, layouts = _names(model)
    snap = weights_snapshot(model)
    ev = af.evaluate_mask(model, tok, names, text=TEXT)
    assert ev["log10_ratio"] != 0
    out = save_masked(model, tok, names, tmp_path / "masked")
    assert_bit_identical(model, snap)  # the source model is untouched
    assert {"config.json", "model.safetensors", "tokenizer.json", "achilles_fast_mask.json"} <= set(os.listdir(out))
    re = _reload(out)
    ids = tokenize(tok, TEXT, 512, "text")
    with torch.no_grad():
        nll = NLLEvaluator(re, ids).nll()
        got = re(ids[None]).logits
        with af.masked(model, names):
            want = model(ids[None]).logits
    assert (nll - ev["clean_nll"]) / math.log(10) == pytest.approx(ev["log10_ratio"], abs=1e-5), layouts
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_bit_identical(model, snap)
    if model_type == "gpt2":
        assert "conv1d" in layouts
    if model_type.startswith("gemma"):
        assert "hook" in layouts  # (1 + w) RMSNorm channels, zeroed through w = -1


def _with_busy_folder(model_type, folder):
    """(model, tokenizer, names to mask, weights snapshot); ``folder`` is created holding one file, keep.txt."""
    model = _build(model_type)
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    return model, char_tokenizer(), _names(model)[0], weights_snapshot(model)


def test_refusals_leave_nothing(tmp_path, monkeypatch):
    busy = tmp_path / "busy"
    model, tok, names, snap = _with_busy_folder("gemma", busy)
    with pytest.raises(OutputExistsError, match="not empty"):
        save_masked(model, tok, names, busy)
    assert os.listdir(busy) == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        save_masked(model, tok, names, tmp_path / "file")
    with pytest.raises(KeyError, match="no scannable module"):
        save_masked(model, tok, ["model.layers.99.mlp.down_proj:1"], tmp_path / "a")
    with pytest.raises(ValueError, match="tokenizer"):
        save_masked(model, None, names, tmp_path / "a")
    spec = get_family("gemma")
    monkeypatch.setattr(spec, "export_fills", {})  # a hook-masked target with no weight equivalent
    with pytest.raises(ValueError, match="masked by a forward hook"):
        save_masked(model, tok, names, tmp_path / "a")
    monkeypatch.undo()
    import achilles_fast.method.export as ex
    monkeypatch.setattr(ex, "offloaded", lambda *a: True)
    with pytest.raises(ValueError, match="offloaded"):
        save_masked(model, tok, names, tmp_path / "a")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["busy", "file"]  # no half-written folder, no temp left
    assert_bit_identical(model, snap)


def test_overwrite_and_interrupt(tmp_path, monkeypatch):
    out = tmp_path / "out"
    model, tok, names, snap = _with_busy_folder("gpt2", out)
    save_masked(model, tok, names, out, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and (out / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not mkdtemp's private 0700
    before = sorted(os.listdir(out))

    real = type(model).save_pretrained

    def dying(self, path, **kw):
        real(self, path, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "save_pretrained", dying)
    with pytest.raises(KeyboardInterrupt):
        save_masked(model, tok, names, out, overwrite=True)
    assert sorted(os.listdir(out)) == before and sorted(os.listdir(tmp_path)) == ["out"]
    assert_bit_identical(model, snap)  # restored although the save died mid-way


def test_refuses_to_replace_its_source(tmp_path):
    import shutil

    from conftest import STORIES
    src = tmp_path / "src"
    shutil.copytree(STORIES, src)
    model, tok, _ = af.load_model(str(src))
    with pytest.raises(OutputExistsError, match="holds the model"):
        save_masked(model, tok, ["model.layers.0.mlp.down_proj:1"], src, overwrite=True)
    with pytest.raises(OutputExistsError, match="holds the model"):
        save_masked(model, tok, ["model.layers.0.mlp.down_proj:1"], tmp_path, overwrite=True)
    assert (src / "model.safetensors").is_file()
