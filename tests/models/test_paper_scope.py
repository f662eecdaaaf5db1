"""scope="paper": exactly the modules the authors' code scans (their keyword rule), MLP activations as hook targets.

The expected lists below are written from the rule in the authors' Stage 1 script (a module is hooked when its
lower-cased name contains mlp / ffn / feed_forward / attention / self_attn and it is a leaf or an nn.Linear /
nn.LayerNorm; a hook that sees no tensor records nothing), not from our registry.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import achilles_fast as af
from achilles_fast.method.masking import BatchedMask, masked
from achilles_fast.method.ranking import Ranking
from achilles_fast.models.registry import act_targets, discover_targets, maskable_targets
from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

TEXT = "Once upon a time a small fox lived in the woods. It liked to sing, and the owls sang along. " * 2
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=24, decoder_sparse_step=1, mlp_only_layers=[])

# Per layer, in module registration order. Llama / Qwen2 / Gemma: the attention's "self_attn" projections, the
# "mlp" Linears and its activation leaf, and "post_attention_layernorm" (its name holds "attention");
# input_layernorm has no keyword. GPT-2: only the "mlp" block ("attn" is not a keyword): c_fc, c_proj, the GELU
# leaf and the dropout leaf (identity in eval mode).
_LLAMA_LAYER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj", "mlp.act_fn", "post_attention_layernorm"]
EXPECTED = {
    "llama": [f"model.layers.{i}.{p}" for i in range(3) for p in _LLAMA_LAYER],
    "qwen2": [f"model.layers.{i}.{p}" for i in range(3) for p in _LLAMA_LAYER],
    "gemma": [f"model.layers.{i}.{p}" for i in range(3) for p in _LLAMA_LAYER],
    "gpt2": [f"transformer.h.{i}.mlp.{p}" for i in range(3) for p in ("c_fc", "c_proj", "act", "dropout")],
}


def _model(model_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_model(model_type, pad_token_id=0, initializer_range=0.2, **MOE)


def _rule_fired(model, ids):
    """The authors' rule, literally, plus a forward: names of the matched modules whose output is a tensor."""
    names = []
    for name, module in model.named_modules():
        if any(k in name.lower() for k in ["mlp", "ffn", "feed_forward", "attention", "self_attn"]):
            if not list(module.children()) or isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                names.append((name, module))
    fired = set()
    hs = [m.register_forward_hook(lambda mod, a, o, n=n: fired.add(n) if isinstance(o, torch.Tensor) else None)
          for n, m in names]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hs:
        h.remove()
    return [n for n, _ in names if n in fired]


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_paper_scope_is_the_authors_module_list(model_type):
    model = _model(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every matched module is mapped
        names = [t.name for t in discover_targets(model, "paper")]
    assert names == EXPECTED[model_type]
    assert names == _rule_fired(model, torch.tensor([[3, 5, 7, 11, 13]]))


# the MoE routers return tuples (never recorded by the authors' hooks); the fused experts' activation is called on
# routed (token, expert) rows: both are documented exceptions
SKIPPED = ("mlp.experts.act_fn",)


@pytest.mark.parametrize("model_type", ["mistral", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt_neox", "opt",
                                        "mixtral", "qwen2_moe", "qwen3_moe"])
def test_paper_scope_follows_the_rule_on_every_family(model_type):
    from transformers import CONFIG_MAPPING
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"no {model_type} in this transformers")
    model = _model(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = [t.name for t in discover_targets(model, "paper")]
    fired = [n for n in _rule_fired(model, torch.tensor([[3, 5, 7, 11, 13]])) if not n.endswith(SKIPPED)]
    assert names == fired


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "qwen3", "gemma3_text", "phi3", "gpt_neox", "qwen2_moe"])
def test_paper_hook_targets_mask_exactly_their_channels(model_type):
    """Activations, dropout copies (in place through the module producing their input) and per-head norms (hooks):
    masking channel c zeroes channel c of that output (and nothing else there), in place (masked) and per batch
    element (BatchedMask); weights restored bit-exact."""
    from transformers import CONFIG_MAPPING
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"no {model_type} in this transformers")
    model = _model(model_type)
    snap = weights_snapshot(model)
    ids = torch.tensor([[(7 * i + 3) % 97 for i in range(12)]])
    hooks = [t for t in discover_targets(model, "paper") if t.layout in ("hook", "producer")]
    assert hooks
    seen_kinds = set()
    for t in hooks:
        if t.kind in seen_kinds:
            continue
        seen_kinds.add(t.kind)
        chans = [1, t.num_channels - 2] if t.num_channels > 2 else [0]
        clean = _capture(model, t, ids)
        assert clean.shape[-1] == t.num_channels, t.name
        with masked(model, [f"{t.name}:{c}" for c in chans]):
            if t.layout == "hook":
                assert_bit_identical(model, snap)
            got = _capture(model, t, ids)
        keep = torch.ones(t.num_channels, dtype=torch.bool)
        keep[chans] = False
        assert torch.all(got[..., chans] == 0) and clean[..., chans].abs().sum() > 0, t.name
        assert torch.equal(got[..., keep], clean[..., keep]), t.name
        with torch.no_grad():
            with masked(model, [f"{t.name}:{c}" for c in chans]):
                inplace = model(input_ids=ids, use_cache=False).logits[0]
            with BatchedMask(Ranking.from_neurons(discover_targets(model, "paper"), [f"{t.name}:{c}" for c in chans])) as bm:
                bm.set_prefixes([len(chans), 0])
                both = model(input_ids=ids.repeat(2, 1), use_cache=False).logits
            plain = model(input_ids=ids, use_cache=False).logits[0]
        torch.testing.assert_close(both[0], inplace, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both[1], plain, rtol=1e-4, atol=1e-5)
    assert_bit_identical(model, snap)


def _capture(model, t, ids):
    got = {}
    h = t.register_forward_hook(lambda m, a, o: got.__setitem__("y", t.output(o).detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return got["y"]


def test_act_fn_is_maskable_in_every_family_that_has_one():
    for mt, path in [("llama", "model.layers.1.mlp.act_fn"), ("gpt2", "transformer.h.1.mlp.act"),
                     ("opt", "model.decoder.layers.1.activation_fn"), ("phi3", "model.layers.1.mlp.activation_fn")]:
        model = _model(mt)
        acts = {t.name: t for t in act_targets(model)}
        assert path in acts and acts[path].layout == "producer", mt
        assert path in {t.name for t in maskable_targets(model)}


def test_find_critical_scope_paper_end_to_end():
    model = _model("llama")
    snap = weights_snapshot(model)
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=4, alpha=1.0, epsilon=0.05, max_neurons=40, scope="paper",
                         progress=False)
    assert_bit_identical(model, snap)
    assert r.stats["n_targets"] == len(EXPECTED["llama"])
    assert r.converged and {n.kind for n in r.top_ranked} <= {t.kind for t in discover_targets(model, "paper")}
    assert abs(r.stats["verify_log10_ratio"] - r.log10_ratio) < 1e-4
    assert af.FindConfig(scope="paper").scope == "paper"
