"""Stage 2 strategies side by side (issue 11): the default ``first`` (paper's answer: probes, then certify every
smaller prefix) vs ``linear`` (the paper's loop) vs ``bisect`` (a verified crossing, maybe later), on one ranking.

The ranking is computed once per scope (Stage 1, K noisy samples); each (strategy, batch size) then runs the Stage 2
search alone (``search_ranking``, verify off), one warm-up and ``--repeats`` timed runs (median), with the 1-minute
load average printed beside each figure. Forwards = batched model calls of the search.

    python benchmarks/search_strategies.py --model ../shared/models/stories260K --scopes down_proj,all,paper
    python benchmarks/search_strategies.py --model smollm2-135m --scopes down_proj,paper
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from achilles_fast import ops
from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import make_ranker
from achilles_fast.method.stage2 import search_ranking
from achilles_fast.method.text import tokenize
from achilles_fast.models.loading import load_model
from achilles_fast.models.registry import discover_targets
from achilles_fast.utils import eval_mode


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="../shared/models/stories260K")
    p.add_argument("--scopes", default="down_proj,paper")
    p.add_argument("--strategies", default="first,linear,bisect")
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--max-neurons", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON rows")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok, name = load_model(a.model)
    ids = tokenize(tok, None, 512)
    rows = []
    print(f"# {name}: Stage 2 strategies, K={a.k}, epsilon={a.epsilon}, T={ids.numel()}, torch {torch.__version__}, "
          f"{a.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| scope | strategy | batch | n | converged | evaluations | forwards | stage2 s (median) | load 1m |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scope in a.scopes.split(","):
        cfg = FindConfig(k=a.k, epsilon=a.epsilon, scope=scope, max_neurons=a.max_neurons, verify=False)
        targets = discover_targets(model, scope)
        with eval_mode(model), torch.no_grad(), ops.use_kernels(True):
            ranking = make_ranker(cfg).rank(model, targets, ids)
        for strategy in a.strategies.split(","):
            for bsz in [int(b) for b in a.batch_sizes.split(",")]:
                c = cfg.replace(strategy=strategy, batch_size=bsz)
                times, r = [], None
                for i in range(a.repeats + 1):  # the first is a warm-up
                    t0 = time.perf_counter()
                    r = search_ranking(model, ranking, ids, c)
                    if i:
                        times.append(time.perf_counter() - t0)
                load = os.getloadavg()[0]
                row = dict(model=name, scope=scope, strategy=strategy, batch=bsz, n=len(r.neurons) if r.converged
                           else None, converged=r.converged, evaluations=r.stats["stage2_evaluations"],
                           forwards=r.stats["stage2_forwards"], stage2_s=statistics.median(times), load_1m=load)
                rows.append(row)
                print(f"| {scope} | {strategy} | {bsz} | {row['n']} | {r.converged} | {row['evaluations']} | "
                      f"{row['forwards']} | {row['stage2_s']:.3f} | {load:.2f} |", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
