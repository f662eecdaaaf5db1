"""Masking: exactly the named channels, batched prefixes == in-place masks, exact restore, bad names."""
from __future__ import annotations

import pytest
import torch

from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."

from achilles_fast.method.masking import BatchedMask, WeightMask, masked
from achilles_fast.method.ranking import Ranking
from achilles_fast.models.registry import discover_targets


@pytest.fixture(params=["llama", "qwen2"])
def model(request):
    return tiny_model(request.param, seed=1, initializer_range=0.5)  # large init: masking matters


def test_masking_zeroes_exactly_named_channels(model):
    targets = discover_targets(model)
    names = [f"{targets[0].name}:3", f"{targets[-1].name}:0", f"{targets[-1].name}:31"]
    ids = ToyTokenizer()(TEXT)["input_ids"]
    outs = {}
    hooks = [t.module.register_forward_hook(lambda m, a, o, n=t.name: outs.__setitem__(n, o.clone()))
             for t in targets]
    snap = weights_snapshot(model)
    with torch.no_grad():
        with masked(model, names) as resolved:
            assert [n.name for n in resolved] == names
            model(input_ids=ids)
            o0, oL = outs[targets[0].name], outs[targets[-1].name]
            assert torch.all(o0[..., 3] == 0) and torch.all(oL[..., 0] == 0) and torch.all(oL[..., 31] == 0)
            others = torch.ones(o0.shape[-1], dtype=torch.bool)
            others[3] = False
            assert torch.all(o0[..., others].abs().sum(-1) > 0)
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    assert_bit_identical(model, snap)


def test_batched_mask_equals_weight_mask(model):
    targets = discover_targets(model)
    total = sum(t.num_channels for t in targets)
    ranking = Ranking(targets, torch.tensor([0, 5, 40, total - 1]), torch.tensor([4.0, 3.0, 2.0, 1.0]))
    ns = [1, 3, 0, 4]
    ids = ToyTokenizer()(TEXT)["input_ids"]
    with torch.no_grad():
        with BatchedMask(ranking) as bm:
            bm.set_prefixes(ns)
            batched = model(input_ids=ids.expand(len(ns), -1)).logits
        for b, n in enumerate(ns):
            with WeightMask(ranking).apply(n):
                single = model(input_ids=ids).logits[0]
            torch.testing.assert_close(batched[b], single, rtol=1e-5, atol=1e-5)


def test_exact_restore_when_masked_block_raises():
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    t = discover_targets(model)
    with pytest.raises(KeyboardInterrupt):
        with masked(model, [f"{t[0].name}:1", f"{t[2].name}:7"]):
            assert model.model.layers[0].mlp.down_proj.weight[1].abs().sum() == 0
            raise KeyboardInterrupt
    assert_bit_identical(model, snap)


def test_unknown_neuron_names():
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    good = f"{discover_targets(model)[0].name}:1"
    for bad in ("model.layers.99.mlp.down_proj:1", f"{discover_targets(model)[0].name}:999", "nonsense"):
        with pytest.raises((KeyError, ValueError)):
            with masked(model, [good, bad]):
                pass
        assert_bit_identical(model, snap)


