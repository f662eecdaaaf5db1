"""k="auto": validation, the K used in the result, prefix-mean scores, the running variance against a sample-by-
sample computation, the stopping rule, exact restore."""
from __future__ import annotations

import pytest
import torch

from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot

import achilles_fast as af
from achilles_fast.method import stage1
from achilles_fast.method.config import FindConfig
from achilles_fast.ops import noisy_embeds

TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1, initializer_range=0.5)


# ---- configuration --------------------------------------------------------------------------------------------------
def test_config_accepts_auto_and_checks_max_k():
    assert FindConfig(k="auto").k == "auto" and FindConfig(k="auto", max_k=8).max_k == 8
    assert FindConfig().max_k == FindConfig().k == 100  # auto never samples more than the default K
    with pytest.raises(ValueError, match="max_k >= 8"):
        FindConfig(k="auto", max_k=7)
    FindConfig(k=10, max_k=1)  # max_k matters only with k="auto"
    for bad in ("Auto", "many", 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k"):
            FindConfig(k=bad)
    with pytest.raises(ValueError, match="max_k"):
        FindConfig(k="auto", max_k=0)


def test_cli_flags(tmp_path):
    import argparse
    p = argparse.ArgumentParser()
    FindConfig.add_arguments(p)
    a = p.parse_args(["--k", "auto", "--max-k", "64"])
    assert FindConfig.from_args(a).k == "auto" and FindConfig.from_args(a).max_k == 64
    assert FindConfig.from_args(p.parse_args(["--k", "12"])).k == 12
    with pytest.raises(SystemExit):
        p.parse_args(["--k", "lots"])
    from achilles_fast.cli import main
    assert main(["find", str(tmp_path), "--k", "auto", "--max-k", "4"]) == 2  # before any model loads


# ---- behaviour ------------------------------------------------------------------------------------------------------
def test_auto_k_result_reports_k_used_and_restores(model):
    snap = weights_snapshot(model)
    r = af.find_critical(model, ToyTokenizer(), TEXT, k="auto", max_k=64, epsilon=0.05, max_neurons=40,
                         progress=False)
    assert_bit_identical(model, snap)
    assert r.params["k"] == "auto" and r.params["max_k"] == 64
    k = r.stats["k_used"]
    checks = r.stats["auto_k"]["checks"]
    assert [c[0] for c in checks] == [2 * 2 ** i for i in range(len(checks))] and k <= 64
    assert k == checks[-1][0] or (k == 64 and checks[-1][0] == 32)  # at max_k it stops without a check
    assert r.stats["auto_k"]["stable"] == (k < 64 or r.stats["auto_k"]["stable"])
    if r.stats["auto_k"]["stable"]:
        assert len(checks) >= 3 and checks[-1][1] == checks[-2][1] == checks[-3][1] and checks[-1][2]
    # the result is the search of the final ranking, equal to a fixed-K run with K = k_used (prefix mean), up to
    # float summation order
    fixed = af.find_critical(model, ToyTokenizer(), TEXT, k=k, epsilon=0.05, max_neurons=40, progress=False)
    assert [n.name for n in r.top_ranked] == [n.name for n in fixed.top_ranked]
    assert torch.allclose(torch.tensor([n.score for n in r.top_ranked]),
                          torch.tensor([n.score for n in fixed.top_ranked]), rtol=1e-5)
    assert r.names == fixed.names and r.curve == fixed.curve


def test_auto_k_runs_to_max_k_when_never_separated(model, monkeypatch):
    from achilles_fast.models.registry import discover_targets
    ids = ToyTokenizer()(TEXT)["input_ids"][0]
    targets = discover_targets(model)
    kw = dict(alpha=5.0, seed=0, mode="per_token", top=20, max_k=16)
    stats = {}
    with torch.no_grad():  # a converged set of 3 at every K, never separated by 1e9 standard errors
        stage1.adaptive_ranking(model, targets, ids, lambda r: [3], z=1e9, stats=stats, **kw)
    assert stats["k_used"] == 16 and stats["auto_k"]["stable"] is False
    checks = stats["auto_k"]["checks"]
    assert [c[0] for c in checks] == [2, 4, 8]  # 16 = max_k: no check needed
    assert checks[0][1] == [3] and all(c[1] in (None, [3]) and c[2] is False for c in checks[1:])
    assert stats["stage1_forwards"] >= 1 + 4  # clean + one chunk per check at least
    with torch.no_grad():  # a search that never converges (size 0) three times in a row is taken as final
        stage1.adaptive_ranking(model, targets, ids, lambda r: [0], z=1e9, stats=stats, **kw)
    assert stats["k_used"] == 8 and stats["auto_k"]["stable"] is True
    monkeypatch.setattr(stage1, "AUTO_Z", 1e9)  # the module default is read at call time
    r = af.find_critical(model, ToyTokenizer(), TEXT, k="auto", max_k=16, epsilon=0.02, max_neurons=40,
                         progress=False)
    assert r.stats["auto_k"]["z"] == 1e9
    assert r.stats["k_used"] == 16 or not r.names  # converged sets are never separated: only max_k stops


def test_auto_k_with_epsilon_list(model):
    rs = af.find_critical(model, ToyTokenizer(), TEXT, k="auto", max_k=32, epsilon=[0.02, 0.1], max_neurons=30,
                          progress=False)
    assert len(rs) == 2 and rs[0].stats["k_used"] == rs[1].stats["k_used"]
    checks = rs[0].stats["auto_k"]["checks"]
    assert checks[0][1] is not None and all(c[1] is None or len(c[1]) == 2 for c in checks)  # a size per epsilon


@pytest.mark.parametrize("mode", ["per_token", "mean"])
def test_running_variance_matches_sample_by_sample(model, monkeypatch, mode):
    """The values and standard errors the stopping rule sees equal a direct per-sample computation."""
    seen = {}

    def spy(ranking, n, values, se, z=stage1.AUTO_Z):
        seen["values"], seen["se"] = values.clone(), se.clone()
        return False  # never stop early

    monkeypatch.setattr(stage1, "separated", spy)
    tok = ToyTokenizer()
    ids = tok(TEXT)["input_ids"][0]
    from achilles_fast.models.registry import discover_targets
    targets = discover_targets(model)
    with torch.no_grad():
        stage1.adaptive_ranking(model, targets, ids, lambda r: [3], alpha=5.0, seed=0, mode=mode, top=50, max_k=16,
                                max_batch_tokens=3 * ids.numel())  # the last check (K=8) is what the spy keeps
        # direct: each sample on its own
        emb = stage1.input_embeddings(model, ids)
        outs = {}
        hooks = [t.module.register_forward_hook(lambda m, a, o, name=t.name: outs.__setitem__(name, o[0].clone()))
                 for t in targets]
        try:
            model(inputs_embeds=emb[None], use_cache=False)
            clean = dict(outs)
            ds = []
            for k in range(8):
                model(inputs_embeds=noisy_embeds(emb, 5.0, 0, k, 1), use_cache=False)
                ds.append({n: (outs[n] - clean[n]).abs() for n in clean})
        finally:
            for h in hooks:
                h.remove()
    vals, ses = [], []
    for t in targets:
        d = torch.stack([x[t.name] for x in ds])  # [K, T, C]
        if mode == "mean":
            per = d.sum(1)  # [K, C]
            vals.append(per.mean(0) / ids.numel())
            ses.append(per.std(0) / 8 ** 0.5 / ids.numel())
        else:
            m, v = d.mean(0), d.var(0)
            best = m.amax(0)
            pos = torch.where(m == best, torch.arange(m.shape[0])[:, None], m.shape[0]).amin(0)
            vals.append(best)
            ses.append((v.gather(0, pos[None])[0] / 8).sqrt())
    assert torch.allclose(seen["values"], torch.cat(vals), rtol=1e-4, atol=1e-6)
    assert torch.allclose(seen["se"], torch.cat(ses), rtol=1e-3, atol=1e-5)


def test_separated_rule():
    from achilles_fast.method.stage1 import separated

    class R:  # the rule reads only .channels
        channels = torch.tensor([0, 1, 2, 3, 4])

    values = torch.tensor([10.0, 9.0, 5.0, 4.9, 1.0])
    tight = torch.full((5,), 0.1)
    loose = torch.full((5,), 2.0)
    assert separated(R, 2, values, tight, z=3) and not separated(R, 2, values, loose, z=3)
    assert not separated(R, 3, values, tight, z=3)  # 5.0 vs 4.9: within 3 standard errors
    assert separated(R, 0, values, loose) and separated(R, 5, values, loose)  # nothing to separate


def test_auto_k_needs_stage2_and_memory(model):
    from achilles_fast.method.rankers import make_ranker
    from achilles_fast.models.registry import discover_targets
    ranker = make_ranker(FindConfig(k="auto"))
    ids = ToyTokenizer()(TEXT)["input_ids"][0]
    with pytest.raises(ValueError, match="use_stage2"):
        ranker.rank(model, discover_targets(model), ids)
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match="max_score_mb"):
        af.find_critical(model, ToyTokenizer(), TEXT, k="auto", max_score_mb=0.001, progress=False)
    assert_bit_identical(model, snap)
