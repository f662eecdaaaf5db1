"""Helpers of the ranker tests: a tiny model, its token ids, plain-PyTorch recordings of activations and gradients."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from conftest import ToyTokenizer, tiny_model

from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import make_ranker
from achilles_fast.method.text import DEFAULT_TEXT, tokenize
from achilles_fast.models.registry import discover_targets


def tiny(family: str = "llama", seed: int = 1, **overrides):
    """(model, tokenizer): a tiny random model with large enough weights for distinct scores."""
    overrides.setdefault("initializer_range", 0.3)
    return tiny_model(family, seed=seed, **overrides), ToyTokenizer()


def ids_of(tok, n: int = 40) -> torch.Tensor:
    return tokenize(tok, DEFAULT_TEXT, n)


def scores(name: str, model, targets, ids, **config):
    """The ranker's raw scores (per target), ids [T]."""
    return make_ranker(FindConfig(ranker=name, **config)).scores(model, targets, ids[None])


def ranked(model, targets, ids, name: str, seed: int = 0, top: int = 1000):
    """(ranked Neurons, scores) of a ranker."""
    r = make_ranker(FindConfig(ranker=name, seed=seed, max_neurons=top)).rank(model, targets, ids)
    return r.neurons(), r.scores.tolist()


def record(model, targets, ids, pick):
    """One plain forward; {target name: pick(args, output)} seen by a hook on each target's module."""
    seen = {}
    hs = [t.module.register_forward_hook(lambda m, a, o, n=t.name: seen.__setitem__(n, pick(a, o).detach()))
          for t in targets]
    try:
        with torch.no_grad():
            model(input_ids=ids[None])
    finally:
        for h in hs:
            h.remove()
    return seen


def reference_grads(model, targets, ids):
    """Independent d loss / d activation: retain_grad on the real outputs of a copy with parameter grads on.
    -> {name: (y [T, C], d loss / d y [T, C])}."""
    m = copy.deepcopy(model)
    tg = {t.name: t for t in discover_targets(m, "down_proj")}
    ys = {}

    def make(name):
        def hook(mod, args, out):
            out.retain_grad()
            ys[name] = out
        return hook

    hs = [tg[t.name].module.register_forward_hook(make(t.name)) for t in targets]
    logits = m(input_ids=ids[None]).logits
    loss = F.cross_entropy(logits[0, :-1], ids[1:])
    loss.backward()
    for h in hs:
        h.remove()
    return {n: (y.detach()[0], y.grad[0]) for n, y in ys.items()}


def literal_signed_ranking(values, targets, floor, top):
    """The paper's comparison scripts, literally: one Python entry per (module, position, channel) with
    |value| > floor, a stable descending sort, then each channel at its first entry."""
    entries = []
    for t in targets:
        v = values[t.name]  # [T, C]
        for s in range(v.shape[0]):
            for h in range(v.shape[1]):
                x = v[s, h].item()
                if abs(x) > floor:
                    entries.append((t.name, h, x))
    entries = sorted(entries, key=lambda e: e[2], reverse=True)
    seen = {}
    for name, h, _ in entries:
        seen.setdefault(f"{name}:{h}", None)
    return list(seen)[:top]


def gradient_case():
    """(model, down_proj targets, ids [T], reference_grads) for the gradient-based rankers."""
    model, tok = tiny()
    ids = ids_of(tok)
    targets = discover_targets(model, "down_proj")
    return model, targets, ids, reference_grads(model, targets, ids)
