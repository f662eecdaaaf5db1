"""Reliability of the Python API (issue 10): NaN/Inf models, bad texts and devices, duplicate neurons, the model's
context, a tokenizer loaded by itself, the model's display name. Weights are bit-identical after every failure."""
from __future__ import annotations

import math
import socket
import time
import warnings

import pytest
import torch

import achilles_fast as af
from achilles_fast.method.finite import NonFiniteError
from achilles_fast.method.rankers.sensitivity import SensitivityRanker
from achilles_fast.models.loading import ModelNotFoundError

from conftest import ToyTokenizer, assert_bits_identical, tiny_model, weights_snapshot

TEXT = "the quick brown fox jumps over the lazy dog, again and again, " * 3
DOWN0 = "model.layers.0.mlp.down_proj"


@pytest.fixture
def nan_model():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    return model


def test_nan_weight_fails_before_stage1(nan_model, monkeypatch):
    monkeypatch.setattr(SensitivityRanker, "rank", lambda *a, **k: pytest.fail("Stage 1 ran on a NaN model"))
    snap = weights_snapshot(nan_model)
    with pytest.raises(NonFiniteError) as e:
        af.find_critical(nan_model, ToyTokenizer(), TEXT, k=2, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "model.layers.1.mlp.down_proj (Linear; its weights hold 1 NaN/Inf value(s))" in msg
    assert isinstance(e.value, ValueError)  # an ordinary exception: the CLI exits 2, a sweep records an error row
    assert_bits_identical(nan_model, snap)


def test_evaluate_mask_on_nan_model(nan_model):
    snap = weights_snapshot(nan_model)
    with pytest.raises(NonFiniteError, match="loss on the text is nan"):
        af.evaluate_mask(nan_model, ToyTokenizer(), [f"{DOWN0}:1"], text=TEXT)
    assert_bits_identical(nan_model, snap)


def test_eval_text_checked_before_stage1(monkeypatch):
    """A token that only the separate evaluation text holds has an Inf embedding: found before Stage 1 runs."""
    monkeypatch.setattr(SensitivityRanker, "rank", lambda *a, **k: pytest.fail("Stage 1 ran"))
    model = tiny_model("llama")
    tok = ToyTokenizer()
    with torch.no_grad():
        model.model.embed_tokens.weight[ord("Z") % 97, 0] = float("inf")
    assert "Z" not in TEXT
    with pytest.raises(NonFiniteError, match=r"loss on the eval_text is .*model\.embed_tokens"):
        af.find_critical(model, tok, TEXT, eval_text="Z" + TEXT, k=2, progress=False)


def test_inf_embedding_named():
    model = tiny_model("llama")
    tok = ToyTokenizer()
    first = int(tok(TEXT)["input_ids"][0, 0])
    with torch.no_grad():
        model.model.embed_tokens.weight[first, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"first non-finite output at model\.embed_tokens \(Embedding"):
        af.find_critical(model, tok, TEXT, k=2, progress=False)


def _nan_when_channel3_zero(model):
    """A model that computes garbage when channel 3 of layer 0's MLP output is masked (zero at every position)."""
    def hook(module, args, out):
        dead = (out[..., 3] == 0).all(dim=-1)  # [B]
        if dead.any():
            out = out.clone()
            out[dead] = float("nan")
        return out
    return model.model.layers[0].mlp.register_forward_hook(hook)


def test_masked_nan_is_an_error_not_a_number():
    model = tiny_model("llama")
    _nan_when_channel3_zero(model)
    snap = weights_snapshot(model)
    with pytest.raises(NonFiniteError, match=r"with 1 neuron\(s\) masked is nan"):
        af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:3"], text=TEXT)
    assert_bits_identical(model, snap)
    r = af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:4"], text=TEXT)  # other channels: finite
    assert math.isfinite(r["log10_ratio"])
    with pytest.raises(NonFiniteError, match=r"with the first \d+ ranked channel\(s\) masked is nan"):
        af.find_critical(model, ToyTokenizer(), TEXT, k=2, epsilon=50, progress=False)
    assert_bits_identical(model, snap)


@pytest.mark.parametrize("bad", [dict(alpha=float("inf")), dict(alpha=float("nan")), dict(epsilon=float("inf")),
                                 dict(epsilon=float("nan")), dict(batch_size=0), dict(max_batch_tokens=0),
                                 dict(max_batch_tokens=-8)])
def test_bad_params_rejected_before_the_model_is_touched(bad):
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match=next(iter(bad))):
        af.find_critical(model, ToyTokenizer(), TEXT, progress=False, **bad)
    assert_bits_identical(model, snap)


def test_bytes_text_is_a_type_error():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match=r"the text must be a str, got bytes \(decode it first"):
        af.find_critical(model, ToyTokenizer(), TEXT.encode(), progress=False)
    with pytest.raises(TypeError, match="the eval_text must be a str"):
        af.find_critical(model, ToyTokenizer(), TEXT, eval_text=b"abc" * 20, progress=False)
    with pytest.raises(TypeError, match="must be a str"):
        af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:1"], text=b"hello there")


def test_duplicate_neurons_count_once():
    model = tiny_model("llama")
    one = af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:3"], text=TEXT)
    two = af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:3", f"{DOWN0}:3", f"{DOWN0}:03"], text=TEXT)
    assert one["n_neurons"] == two["n_neurons"] == 1 and two["neurons"] == [f"{DOWN0}:3"]
    assert two["log10_ratio"] == one["log10_ratio"]


def test_max_tokens_beyond_context_is_clamped_with_a_warning():
    model = tiny_model("llama", max_position_embeddings=24)
    text = "x y z " * 40  # 240 tokens (one per byte)
    with pytest.warns(UserWarning, match=r"exceeds the model's context of 24 tokens; using the first 24"):
        res = af.find_critical(model, ToyTokenizer(), text, k=2, max_tokens=100_000, max_neurons=4, progress=False)
    assert res.params["n_tokens"] == 24 and res.params["max_tokens"] == 100_000
    with pytest.warns(UserWarning, match="context of 24"):
        r = af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:1"], text=text, max_tokens=1000)
    assert r["n_tokens"] == 24
    with warnings.catch_warnings():  # within the context: the usual max_tokens truncation only
        warnings.simplefilter("error")
        assert af.evaluate_mask(model, ToyTokenizer(), [f"{DOWN0}:1"], text=text[:20])["n_tokens"] == 20


def test_corpus_windows_validated():
    model = tiny_model("llama", max_position_embeddings=24)
    corpus = "abcdefgh " * 50
    for kw, needle in [(dict(window=0), "window must be"), (dict(window=1), "window must be"),
                       (dict(window=30), "exceeds the model's context of 24"),
                       (dict(window=24), r"window 24 \+ BOS exceeds"), (dict(window=8, max_windows=0), "max_windows")]:
        with pytest.raises(ValueError, match=needle):
            af.evaluate_corpus(model, ToyTokenizer(), [f"{DOWN0}:1"], corpus, **kw)
    r = af.evaluate_corpus(model, ToyTokenizer(), [f"{DOWN0}:1"], corpus, window=24, bos=False, max_windows=2)
    assert r["windows"] == 2


@pytest.mark.parametrize("device,needle", [("tpu9", "is not a device"), ("cuda:x", "is not a device"),
                                           ("cuda", "is not available here"), ("cuda:7", "")])
def test_bad_device(device, needle):
    if device.startswith("cuda") and torch.cuda.is_available():
        if device == "cuda":
            pytest.skip("CUDA is available here")
        needle = "does not exist"
    needle = needle or "not available"
    model = tiny_model("llama")
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match=needle):
        af.find_critical(model, ToyTokenizer(), TEXT, device=device, progress=False)
    assert_bits_identical(model, snap)


@pytest.mark.parametrize("offline", ["1", None])
def test_tokenizer_for_a_hub_id_fails_at_once(monkeypatch, offline):
    """find_critical(model, None) on a model named by a hub id: one clear line at once, no network."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    connects = []

    def connect(self, *args):
        connects.append(args)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    model = tiny_model("llama")
    model.name_or_path = model.config._name_or_path = "some-org/some-model"
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as e:
        af.find_critical(model, None, TEXT, progress=False)
    assert time.perf_counter() - t0 < 10 and not connects
    assert str(e.value).startswith("no tokenizer for 'some-org/some-model' (pass tokenizer=)")
    assert "\n" not in str(e.value)


def test_tokenizer_from_a_local_model_folder(stories):
    model, tok = stories
    res = af.find_critical(model, None, k=2, max_tokens=32, max_neurons=2, progress=False)
    assert res.params["n_tokens"] == 32


def test_result_shows_the_models_name_not_its_cache_path():
    model = tiny_model("llama")
    model.config._name_or_path = "/root/.cache/achilles_fast/models/Some-1234"
    model.achilles_source = {"name": "Some model (Q4 GGUF)", "kind": "gguf"}
    res = af.find_critical(model, ToyTokenizer(), TEXT, k=2, max_neurons=2, progress=False)
    assert res.model == "Some model (Q4 GGUF)" and "Some model (Q4 GGUF)" in str(res)
    assert ".cache" not in str(res)


def test_readme_evaluate_mask_line_does_not_warn_about_rankings(stories):
    """The README's ``evaluate_mask(..., text="Any other text.")`` (4 SmolLM2 tokens; "Hi there." is 5 here)."""
    model, tok = stories
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        af.evaluate_mask(model, tok, [f"{DOWN0}:1"], text="Hi there.")
    assert not [x for x in w if "ranking" in str(x.message)], [str(x.message) for x in w]
    with pytest.warns(UserWarning, match="rankings will be unstable"):  # still warned where a ranking is made
        af.find_critical(model, tok, "Hi there.", k=2, max_neurons=2, progress=False)


@pytest.mark.parametrize("separate", [False, True])
def test_clean_check_is_stage2s_clean_forward(monkeypatch, separate):
    """The evaluation text's clean-model check is Stage 2's clean NLL (computed once, before Stage 1); only a separate
    scoring text gets a forward of its own."""
    from achilles_fast.method.perplexity import NLLEvaluator
    made = []
    real_init = NLLEvaluator.__init__

    def counting_init(self, model, ids, *a, **k):
        made.append(k.get("what"))
        real_init(self, model, ids, *a, **k)
    monkeypatch.setattr(NLLEvaluator, "__init__", counting_init)
    model = tiny_model("llama")
    r = af.find_critical(model, ToyTokenizer(), TEXT, eval_text=TEXT[::-1] if separate else None, k=2,
                         progress=False)
    assert made == (["the text", "the eval_text"] if separate else ["the text"])
    assert math.isfinite(r.clean_nll)
