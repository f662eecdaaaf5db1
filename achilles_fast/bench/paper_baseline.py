"""A faithful re-implementation of the paper's procedure, written for this project, for comparison only.

It follows the structure of the paper's reference code (arXiv 2510.10238): a sequential loop over the K noisy
samples (one full forward each, LM head included), per-entry ranking in Python (every (module, position,
channel) entry becomes a Python tuple, sorted, then duplicate channels collapse), and one full forward per greedy
step n = step, 2 step, ... with the top-n channels zeroed by forward hooks.

It uses the same noise as achilles_fast (the Philox stream defined in ``achilles_fast.ops.noise``, generated
one sample at a time through ``achilles_fast.ops.noisy_embeds``, which costs about what the paper's
``torch.randn`` costs) so that both return the same critical set for the same seed. Do not use it for real work: it is slow on purpose.

    achilles-fast bench baseline MODEL [--k 100] [--epsilon 1] [--out baseline.json]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from achilles_fast import ops
from achilles_fast.models.registry import discover_targets
from achilles_fast.method.text import tokenize

LN10 = math.log(10.0)


def _ppl_nll(model, ids: torch.Tensor) -> float:
    """Mean token NLL of ids [T] with one full forward."""
    logits = model(input_ids=ids.unsqueeze(0), use_cache=False).logits[0, :-1].float()
    return float(F.cross_entropy(logits, ids[1:]))


def paper_find_critical(model, tokenizer, text: Optional[str] = None, k: int = 100, alpha: float = 5.0,
                        seed: int = 0, epsilon: float = 1.0, step: int = 1, max_neurons: int = 1000,
                        max_tokens: int = 512, scope: str = "down_proj") -> Dict:
    """The paper's procedure, sequential. Returns a dict with the critical set, curve, timings, forward counts."""
    targets = discover_targets(model, scope)
    ids = tokenize(tokenizer, text, max_tokens)
    model.eval()
    forwards = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        # ---- Stage 1: clean pass, then K sequential noisy passes ---------------------------------------
        acts: Dict[str, torch.Tensor] = {}
        hooks = [t.module.register_forward_hook(lambda m, a, o, n=t.name: acts.__setitem__(n, o[0].detach().clone()))
                 for t in targets]
        try:
            emb = model.get_input_embeddings()(ids.unsqueeze(0))[0]  # [T, H]
            model(inputs_embeds=emb.unsqueeze(0), use_cache=False)
            forwards += 1
            clean = dict(acts)
            total = {t.name: torch.zeros(clean[t.name].shape, dtype=torch.float32) for t in targets}
            for s in range(k):
                noisy = ops.noisy_embeds(emb, float(alpha), int(seed), s, 1)  # [1, T, H] = emb + alpha * eps_s
                model(inputs_embeds=noisy, use_cache=False)
                forwards += 1
                for t in targets:
                    total[t.name] += (acts[t.name].float() - clean[t.name].float()).abs()
        finally:
            for h in hooks:
                h.remove()
        scores = {name: v / k for name, v in total.items()}
        t1 = time.perf_counter()

        # ---- ranking: every entry as a Python tuple, sorted, duplicates collapse -----------------------
        entries = []
        for t in targets:
            s = scores[t.name].tolist()
            for pos, row in enumerate(s):
                for c, v in enumerate(row):
                    entries.append((v, t.name, pos, c))
        entries.sort(key=lambda e: -e[0])  # stable: ties keep (module, position, channel) order
        ranked: List[tuple] = []
        seen = set()
        for v, name, pos, c in entries:
            if (name, c) not in seen:
                seen.add((name, c))
                ranked.append((name, c, v))
            if len(ranked) >= max_neurons:
                break
        t2 = time.perf_counter()

        # ---- Stage 2: one forward per greedy step ------------------------------------------------------
        by_name = {t.name: t for t in targets}
        clean_nll = _ppl_nll(model, ids)
        forwards += 1
        curve, found, nll_found = [], None, None
        n = step
        while True:
            n = min(n, len(ranked))
            zero: Dict[str, List[int]] = {}
            for name, c, _ in ranked[:n]:
                zero.setdefault(name, []).append(c)
            hs = []
            for name, chans in zero.items():
                def hook(m, a, o, chans=chans):
                    o = o.clone()
                    o[..., chans] = 0
                    return o
                hs.append(by_name[name].module.register_forward_hook(hook))
            try:
                nll = _ppl_nll(model, ids)
                forwards += 1
            finally:
                for h in hs:
                    h.remove()
            ratio = (nll - clean_nll) / LN10
            curve.append([n, ratio])
            if ratio >= epsilon:
                found, nll_found = n, nll
                break
            if n >= min(max_neurons, len(ranked)):
                break
            n += step
        t3 = time.perf_counter()
    crit = [f"{name}:{c}" for name, c, _ in ranked[:found]] if found else []
    return {"neurons": crit, "converged": found is not None, "curve": curve, "clean_nll": clean_nll,
            "log10_ratio": None if found is None else (nll_found - clean_nll) / LN10,
            "ranking_head": [f"{name}:{c}" for name, c, _ in ranked[:50]],
            "timings": {"stage1": t1 - t0, "ranking": t2 - t1, "stage2": t3 - t2, "total": t3 - t0},
            "forwards": forwards, "n_tokens": int(ids.numel())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=5.0)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from achilles_fast.models.loading import load_model
    model, tok, _ = load_model(a.model)
    r = paper_find_critical(model, tok, k=a.k, alpha=a.alpha, seed=a.seed, epsilon=a.epsilon)
    print(json.dumps({k: v for k, v in r.items() if k != "ranking_head"}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
