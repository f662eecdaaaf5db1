"""find_critical end to end on tiny random models: determinism, JSON, log space, exact restore, bad input."""
from __future__ import annotations

import json
import math

import pytest

from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."

import achilles_fast as af
from achilles_fast.method.result import CriticalResult
from achilles_fast.models.registry import UnsupportedModelError, discover_targets


@pytest.fixture(params=["llama", "qwen2"])
def model(request):
    return tiny_model(request.param, seed=1, initializer_range=0.5)  # large init: masking matters


def test_determinism_and_seed(model):
    kw = dict(k=5, epsilon=0.05, max_neurons=20, progress=False)
    a = af.find_critical(model, ToyTokenizer(), TEXT, seed=0, **kw)
    b = af.find_critical(model, ToyTokenizer(), TEXT, seed=0, **kw)
    c = af.find_critical(model, ToyTokenizer(), TEXT, seed=1, **kw)
    assert [n.name for n in a.top_ranked] == [n.name for n in b.top_ranked]
    assert [n.score for n in a.top_ranked] == [n.score for n in b.top_ranked]
    assert a.curve == b.curve
    assert [n.score for n in a.top_ranked] != [n.score for n in c.top_ranked]


def test_find_critical_end_to_end_and_json(model, tmp_path):
    snap = weights_snapshot(model)
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=6, epsilon=0.02, max_neurons=64, progress=False,
                         strategy="linear", batch_size=3)
    assert_bit_identical(model, snap)
    assert r.converged and 1 <= len(r.neurons) <= 64
    assert r.curve[-1][0] >= len(r.neurons)
    assert [n.name for n in r.neurons] == [n.name for n in r.top_ranked[:len(r.neurons)]]
    assert r.log10_ratio >= 0.02
    assert abs(r.stats["verify_log10_ratio"] - r.log10_ratio) < 1e-4
    p = tmp_path / "r.json"
    r.to_json(str(p))
    back = CriticalResult.load(str(p))
    assert back.names == r.names and back.curve == r.curve
    d = json.loads(p.read_text())
    for key in ("neurons", "curve", "clean_ppl", "log10_ratio", "params", "timings", "versions", "converged"):
        assert key in d
    # same set through the linear strategy with a different batch size
    r2 = af.find_critical(model, ToyTokenizer(), TEXT, k=6, epsilon=0.02, max_neurons=64, progress=False,
                          strategy="bisect", batch_size=5)
    assert r2.names == r.names or not _monotone(r.curve)


def _monotone(curve):
    ys = [y for _, y in curve]
    return all(a <= b for a, b in zip(ys, ys[1:]))


def test_log_space_extremes():
    r = CriticalResult(model="m", neurons=[], converged=True, epsilon=1.0, clean_nll=2.0, final_nll=2.0 + 60 * math.log(10),
                       log10_ratio=60.0, curve=[[1, 60.0]], params={}, timings={}, stats={}, versions={})
    d = json.loads(r.to_json())  # no inf/nan anywhere
    assert d["log10_final_ppl"] == pytest.approx(60 + 2 / math.log(10))
    assert "1e6" in r.summary()


# ---- exact restore ----------------------------------------------------------------------------------

class _Boom(Exception):
    pass


def _raise_on_call(module, n, exc):
    calls = {"n": 0}

    def hook(m, a, o):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("exc", [_Boom("mid-stage"), KeyboardInterrupt()])
@pytest.mark.parametrize("when", [1, 2, 4, 6])  # clean pass, noisy pass, Stage 2 pass, verification pass
def test_exact_restore_after_exception(exc, when):
    model = tiny_model("llama", seed=2)
    targets = discover_targets(model)
    snap = weights_snapshot(model)
    model.train()
    h = _raise_on_call(targets[1].module, when, exc)
    try:
        with pytest.raises(type(exc)):
            af.find_critical(model, ToyTokenizer(), TEXT, k=4, max_batch_tokens=2 * 87, epsilon=100.0,
                             max_neurons=3, strategy="linear", batch_size=1, progress=False)
    finally:
        h.remove()
    assert_bit_identical(model, snap)
    assert model.training, "training mode restored"
    assert all(not t.module._forward_hooks for t in targets), "no hook left behind"


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(k=0), "k"), (dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(epsilon=0.0), "epsilon"),
    (dict(scope="attn"), "scope"), (dict(ranking="median"), "ranking"), (dict(strategy="magic"), "strategy"),
    (dict(step=0), "step"), (dict(max_neurons=0), "max_neurons"),
])
def test_bad_params(kw, match):
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match=match):
        af.find_critical(model, ToyTokenizer(), TEXT, progress=False, **kw)
    assert_bit_identical(model, snap)


def test_bad_texts():
    model = tiny_model("llama")
    tok = ToyTokenizer()
    with pytest.raises(ValueError, match="empty"):
        af.find_critical(model, tok, "   ", progress=False)
    with pytest.raises(ValueError, match="token"):
        af.find_critical(model, tok, "a", progress=False)
    with pytest.warns(UserWarning, match="unstable"):
        af.find_critical(model, tok, "abcdef", k=2, max_neurons=2, progress=False)


def test_unsupported_model():
    model = tiny_model("llama")
    model.config.model_type = "not_a_family"
    with pytest.raises(UnsupportedModelError, match="registry"):
        af.find_critical(model, ToyTokenizer(), TEXT, progress=False)


def test_scope_all_scans_every_component():
    model = tiny_model("llama")
    kinds = {t.kind for t in discover_targets(model, "all")}
    assert {"attn.q_proj", "attn.o_proj", "mlp.down_proj", "mlp.up_proj", "norm.input"} <= kinds
    r = af.find_critical(model, ToyTokenizer(), TEXT, k=3, epsilon=0.02, max_neurons=16, scope="all",
                         progress=False)
    assert r.top_ranked and len({n.kind for n in r.top_ranked}) >= 1


