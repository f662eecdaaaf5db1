"""``stage2_dtype`` against fp32 Stage 2 (issue 21, item 5): for each model and scope, one Stage 1 ranking, then the
same Stage 2 search with prefixes evaluated in fp32 and in each low dtype (incremental on in both). Reports whether
the critical set is the same (n and neurons), the calibrated margin, the fp32 re-evaluations and each search's
seconds with the 1-minute load beside it. ``--stage 1``: ``stage1_dtype`` instead, whole ``find_critical`` runs in
fp32 and with each certified low-precision Stage 1 (``method.certify``): the same set, log10 ratio and paper entries,
whether the bf16 ranking was certified (or why not) and the Stage 1 / total seconds. Run it alone on the machine.

    python benchmarks/stage2_dtype_agreement.py --models stories,smollm2 --out benchmarks/results_stage2_dtype_cpu.json
    python benchmarks/stage2_dtype_agreement.py --models stories --scopes down_proj --k 4 --max-tokens 64  # smoke
    python benchmarks/stage2_dtype_agreement.py --models stories,smollm2 --device cuda  # benchmarks/gpu_suite.sh
    python benchmarks/stage2_dtype_agreement.py --stage 1 --models stories,smollm2,gemma3 \
        --out benchmarks/results_stage1_dtype_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import achilles_fast as af
from achilles_fast import ops
from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import make_ranker
from achilles_fast.method.stage2 import search_ranking
from achilles_fast.method.text import tokenize
from achilles_fast.models.loading import ModelNotFoundError, load_model
from achilles_fast.models.registry import SCOPES, discover_targets
from achilles_fast.utils import eval_mode

from _throughput_common import STORIES  # benchmarks/: the one path to ../shared

MODELS = {"stories": None, "smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="stories,smollm2", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--scopes", default=",".join(SCOPES), help="comma-separated scopes")
    p.add_argument("--stage", type=int, choices=(1, 2), default=2, help="the stage run in the low dtypes")
    p.add_argument("--dtypes", default="bfloat16", help="low stage1/stage2_dtype values compared with float32")
    p.add_argument("--strategy", default=FindConfig.strategy)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--max-neurons", type=int, default=FindConfig.max_neurons)
    p.add_argument("--stories", default=str(STORIES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="JSON rows")
    a = p.parse_args(argv)
    models, scopes = a.models.split(","), a.scopes.split(",")
    bad = sorted(set(models) - set(MODELS)) + sorted(set(scopes) - set(SCOPES))
    if bad:
        p.error(f"unknown model(s)/scope(s) {', '.join(bad)}")
    torch.set_num_threads(a.threads)
    dtypes = [None] + [d for d in a.dtypes.split(",") if d]
    print(f"# stage{a.stage}_dtype agreement, K={a.k}, T<={a.max_tokens}, strategy {a.strategy}, torch "
          f"{torch.__version__}, {a.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if a.stage == 1:
        print("| model | scope | stage1 dtype | n | same set, ratio, entries | certified (length) | margin | "
              "stage1 s | total s | load 1m |")
    else:
        print("| model | scope | stage2 dtype | n | same set | evaluations | fp32 re-evaluations | margin | seconds | "
              "load 1m |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for m in models:
        try:
            model, tok, name = load_model(MODELS[m] or a.stories, device=a.device)
        except ModelNotFoundError as e:
            print(f"# {m}: skipped ({e})")
            continue
        ids = tokenize(tok, None, a.max_tokens)
        for scope in scopes:
            cfg = FindConfig(k=a.k, max_tokens=a.max_tokens, scope=scope, strategy=a.strategy,
                             max_neurons=a.max_neurons)
            if a.stage == 1:
                rows += stage1_rows(m, name, model, tok, cfg, dtypes, a.device)
                continue
            with eval_mode(model), torch.no_grad(), ops.use_kernels(True):
                ranking = make_ranker(cfg).rank(model, discover_targets(model, cfg.scope), ids)
            ref = None
            for d in dtypes:
                t0 = time.perf_counter()
                r = search_ranking(model, ranking, ids, cfg.replace(stage2_dtype=d))
                s = time.perf_counter() - t0
                low = r.stats.get("stage2_dtype") if d else None
                low = low if isinstance(low, dict) else {}
                names = [n.name for n in r.neurons]
                ref = names if ref is None else ref
                row = dict(model=name, scope=scope, stage2_dtype=d or "float32", n=len(names), converged=r.converged,
                           same=names == ref, evaluations=r.stats.get("stage2_evaluations"),
                           exact_reevaluations=low.get("exact_reevaluations"), margin=low.get("margin"),
                           max_error=low.get("max_error"), fallback=low.get("fallback"), seconds=s,
                           load_1m=os.getloadavg()[0], log10_ratio=r.log10_ratio, device=a.device,
                           weight_copy_bytes=low.get("weight_copy_bytes"))
                rows.append(row)
                mg = "-" if row["margin"] is None else f"{row['margin']:.3g}"
                print(f"| {m} | {scope} | {row['stage2_dtype']} | {row['n'] if r.converged else 'not reached'} | "
                      f"{'yes' if row['same'] else 'NO'} | {row['evaluations']} | "
                      f"{'-' if row['exact_reevaluations'] is None else row['exact_reevaluations']} | {mg} | "
                      f"{s:.2f} | {row['load_1m']:.2f} |", flush=True)
        del model
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


def stage1_rows(m, name, model, tok, cfg: FindConfig, dtypes, device) -> list:
    """Whole find_critical runs, fp32 first, then each certified low-precision Stage 1 -> rows (printed)."""
    rows, ref = [], None
    for d in dtypes:
        t0 = time.perf_counter()
        r = af.find_critical(model, tok, config=cfg.replace(stage1_dtype=d), progress=False)
        s = time.perf_counter() - t0
        c = r.stats.get("stage1_certified") or {}
        key = ([n.name for n in r.neurons], r.log10_ratio, r.stats.get("paper_entries"))
        ref = key if ref is None else ref
        row = dict(model=name, scope=cfg.scope, stage1_dtype=d or "float32", n=len(key[0]), converged=r.converged,
                   same=key == ref, certified=c.get("certified"), length=c.get("length"), margin=c.get("margin"),
                   max_error=c.get("max_error"), fallback=c.get("fallback"), calibration_s=c.get("calibration_s"),
                   stage1_s=r.timings.get("stage1"), stage2_s=r.timings.get("stage2"), seconds=s,
                   load_1m=os.getloadavg()[0], log10_ratio=r.log10_ratio, paper_entries=key[2], device=device)
        rows.append(row)
        cert = "-" if d is None else f"{'yes' if row['certified'] else 'no'} ({row['length']})"
        mg = "-" if row["margin"] is None else f"{row['margin']:.3g}"
        print(f"| {m} | {cfg.scope} | {row['stage1_dtype']} | {row['n'] if r.converged else 'not reached'} | "
              f"{'yes' if row['same'] else 'NO'} | {cert} | {mg} | {row['stage1_s']:.2f} | {s:.2f} | "
              f"{row['load_1m']:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
