"""FindConfig: one declaration of every parameter drives validation, the CLI, sweep keys, result params and
find_critical's keyword arguments."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math

import pytest

import achilles_fast as af
from achilles_fast.method.config import FindConfig

from conftest import ToyTokenizer, tiny_model


def test_defaults_are_find_criticals_keywords():
    sig = inspect.signature(af.find_critical).parameters
    for name, default in FindConfig.defaults().items():
        assert sig[name].kind is inspect.Parameter.KEYWORD_ONLY and sig[name].default == default, name
    with pytest.raises(TypeError, match="bogus"):
        af.find_critical(tiny_model("llama"), ToyTokenizer(), "some text here", bogus=1)


@pytest.mark.parametrize("kw,match", [
    (dict(k=0), "k"), (dict(k=2.5), "k"), (dict(k="3"), "k"), (dict(k=True), "k"),
    (dict(alpha=0.0), "alpha"), (dict(alpha=math.inf), "alpha"), (dict(alpha=math.nan), "alpha"),
    (dict(epsilon=math.inf), "epsilon"), (dict(epsilon=-1), "epsilon"), (dict(step=0), "step"),
    (dict(max_neurons=0), "max_neurons"), (dict(max_tokens=1), "max_tokens"), (dict(batch_size=0), "batch_size"),
    (dict(max_batch_tokens=-5), "max_batch_tokens"), (dict(max_score_mb=0), "max_score_mb"),
    (dict(scope="attn"), "scope"), (dict(ranking="median"), "ranking"), (dict(strategy="magic"), "strategy"),
    (dict(ranker="oracle"), "ranker"), (dict(stage1_dtype="int8"), "stage1_dtype"), (dict(kernels="yes"), "kernels"),
])
def test_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        FindConfig(**kw)


def test_frozen_and_replace():
    cfg = FindConfig(k=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 3
    assert cfg.replace(alpha=2).alpha == 2.0 and cfg.replace(alpha=2).k == 7
    with pytest.raises(ValueError):
        cfg.replace(k=0)
    assert FindConfig(epsilon=2).epsilon == 2.0 and isinstance(FindConfig(epsilon=2).epsilon, float)


def test_cli_flags_generated_from_fields():
    p = argparse.ArgumentParser()
    FindConfig.add_arguments(p)
    dests = {a.dest for a in p._actions}
    assert set(FindConfig.names()) <= dests
    args = p.parse_args(["--k", "7", "--alpha", "2.5", "--no-kernels", "--discover", "--scope", "all",
                         "--batch-size", "3", "--ranker", "random"])
    assert FindConfig.from_args(args) == FindConfig(k=7, alpha=2.5, kernels=False, discover=True, scope="all",
                                                    batch_size=3, ranker="random")
    assert FindConfig.from_args(p.parse_args([])) == FindConfig()
    help_text = p.format_help()
    assert help_text.count("(default: 100)") == 1  # --k, once (no duplicated defaults)
    for a in p._actions:
        if a.dest in FindConfig.names():
            assert a.help, f"--{a.dest} has no help"
    with pytest.raises(SystemExit):
        p.parse_args(["--scope", "attn"])


def test_params_and_sweep_keys_come_from_the_fields():
    from achilles_fast.studies.sweep import SweepSpec
    assert set(FindConfig().params()) == set(FindConfig.names())
    assert set(SweepSpec.defaults()) == set(FindConfig.names())
    r = af.find_critical(tiny_model("llama"), ToyTokenizer(), "The quick brown fox jumps over it.", k=2,
                         max_neurons=4, epsilon=50.0, progress=False)
    assert {k: r.params[k] for k in FindConfig.names()} == FindConfig(k=2, max_neurons=4, epsilon=50.0).params()
    with pytest.raises(ValueError, match="sweep spec: k"):
        SweepSpec.from_dict({"checkpoints": ["x"], "grid": {"k": [0]}})
