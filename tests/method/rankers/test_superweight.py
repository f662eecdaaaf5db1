"""superweight: a planted super weight comes first; the score formula for Linear and Conv1D layouts."""
from __future__ import annotations

import pytest
import torch

from rankers_common import ids_of, ranked, record, scores, tiny

from achilles_fast.models.registry import discover_targets


def test_superweight_finds_a_planted_super_weight():
    model, tok = tiny()
    layer, i0, j0 = 1, 7, 11
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.up_proj.weight[j0] *= 200.0  # input spike into down_proj at channel j0
        mlp.down_proj.weight[i0, j0] = 5.0  # the super weight routes it to output channel i0
    ids = ids_of(tok)
    got, sc = ranked(model, discover_targets(model, "down_proj"), ids, "superweight", top=5)
    assert got[0].name == f"model.layers.{layer}.mlp.down_proj:{i0}"
    x = record(model, [t for t in discover_targets(model, "down_proj") if t.module is mlp.down_proj], ids,
               lambda a, o: a[0])
    xmax = next(iter(x.values()))[0].abs().amax(0)
    assert int(xmax.argmax()) == j0
    assert sc[0] == pytest.approx(5.0 * float(xmax[j0]), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_superweight_formula_for_linear_and_conv1d_layouts(family):
    """score[i] = max_t |x_t,j*| * |W[i, j*]| (nn.Linear [out, in]) or |W[j*, i]| (GPT-2 Conv1D [in, out])."""
    model, tok = tiny(family, seed=2, initializer_range=0.02)
    targets = discover_targets(model, "down_proj")
    ids = ids_of(tok)
    xs = record(model, targets, ids, lambda a, o: a[0])
    got = scores("superweight", model, targets, ids)
    for t, g in zip(targets, got):
        xmax = xs[t.name][0].abs().amax(0)
        j = int(xmax.argmax())
        w = t.module.weight.detach()
        col = w[:, j] if t.layout == "linear" else w[j, :]
        assert t.layout == ("conv1d" if family == "gpt2" else "linear")
        assert torch.allclose(g, col.abs() * xmax[j], rtol=1e-5)


def test_superweight_scores_other_targets_zero():
    model, tok = tiny()
    targets = discover_targets(model, "all")
    got = scores("superweight", model, targets, ids_of(tok))
    for t, g in zip(targets, got):
        assert (g.abs().sum() > 0) == ("down_proj" in t.name)
