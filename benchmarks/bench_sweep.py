"""Planned sweep vs one job at a time (issue 14): 3 checkpoints x 2 texts x epsilon {0.5, 1, 2}.

Side by side in one run, alternating per repeat:
- baseline, today's sweep before planning: each checkpoint loaded once, then ``find_critical`` once per job
  (``jobs.run_job``: its own Stage 1 and its own search), no prefetch;
- planned: ``run_sweep`` into a fresh database (one Stage 1 per (checkpoint, text), one search per epsilon group,
  the next checkpoint prefetched), end to end including loads and database writes.
A warm-up loads every checkpoint first (GGUF conversion cached, files in the page cache). Both must give identical
rows (critical sets, curves, ratios); the table prints medians and the load average beside each figure.

    python benchmarks/bench_sweep.py                       # the issue's run (K=100; ~5 min per repeat on 2 cores)
    python benchmarks/bench_sweep.py --quick               # small check: stories260K + tiny Llama, K=20
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _throughput_common import STORIES, load_avg, texts, tiny_llama  # noqa: E402

FIELDS = ("neurons", "curve", "converged", "log10_ratio", "clean_nll", "final_nll", "epsilon")


def build_spec(a, tmp: Path) -> dict:
    cks = [{"name": "stories260K", "path": str(STORIES)}]
    if not a.quick:
        cks.append({"name": "smollm2-135m", "path": "smollm2-135m"})
    cks.append({"name": "tiny-llama", "path": str(tiny_llama(tmp / "tiny-llama"))})
    ts = [{"name": n, "text": t} if t is not None else "default" for n, t in texts(2)]
    return {"checkpoints": cks, "texts": ts, "params": {"k": a.k, "max_tokens": a.max_tokens},
            "grid": {"epsilon": list(a.epsilons)}}


def run_baseline(spec_dict: dict) -> tuple:
    """One job at a time: -> ({key: result dict}, seconds)."""
    from achilles_fast.studies.sweep import SweepSpec
    from achilles_fast.studies.sweep.jobs import Loaded, run_job
    spec = SweepSpec.from_dict(spec_dict)
    jobs = spec.jobs()
    out = {}
    t0 = time.perf_counter()
    for c in spec.checkpoints:
        lc = Loaded(c)
        for j in [j for j in jobs if j.checkpoint == c.name]:
            out[j.key] = run_job(lc.model, lc.tok, j).to_dict()
        del lc
    return out, time.perf_counter() - t0


def run_planned(spec_dict: dict, db: Path) -> tuple:
    from achilles_fast.studies.sweep.report import load_rows
    from achilles_fast.studies.sweep import run_sweep
    t0 = time.perf_counter()
    rep = run_sweep(spec_dict, db=str(db), log=None)
    secs = time.perf_counter() - t0
    assert rep.complete, rep
    return {r["key"]: r["result"] for r in load_rows(str(db))}, secs


def compare(base: dict, planned: dict) -> list:
    """Keys whose rows differ in any of FIELDS."""
    return [k for k in base if any(base[k][f] != planned.get(k, {}).get(f) for f in FIELDS)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="stories260K + tiny Llama only, K=20")
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args()
    if a.quick:
        a.k = min(a.k, 20)
    import torch
    from achilles_fast.studies.sweep import SweepSpec
    from achilles_fast.studies.sweep.jobs import Loaded
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = build_spec(a, tmp)
        n_jobs = len(SweepSpec.from_dict(spec).jobs())
        print(f"# bench_sweep: {len(spec['checkpoints'])} checkpoints x {len(spec['texts'])} texts x epsilon "
              f"{a.epsilons} = {n_jobs} jobs, K={a.k}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        for c in SweepSpec.from_dict(spec).checkpoints:  # warm-up: conversions cached, files in the page cache
            Loaded(c)
        base_t, plan_t, diffs = [], [], []
        for r in range(a.repeats):
            order = ("baseline", "planned") if r % 2 == 0 else ("planned", "baseline")
            for which in order:
                la = load_avg()
                if which == "baseline":
                    base, t = run_baseline(spec)
                    base_t.append(t)
                else:
                    planned, t = run_planned(spec, tmp / f"bench{r}.db")
                    plan_t.append(t)
                print(f"repeat {r + 1} {which:<8} {t:8.1f} s   load {la}", flush=True)
            diffs.append(compare(base, planned))
        bt, pt = statistics.median(base_t), statistics.median(plan_t)
        same = all(not d for d in diffs)
        print()
        print("| sweep | seconds (median) | jobs/hour | speed-up | identical rows | load (1, 5, 15 min) |")
        print("|---|---|---|---|---|---|")
        print(f"| one job at a time | {bt:.1f} | {3600 * n_jobs / bt:.0f} | 1.00 | | {load_avg()} |")
        print(f"| planned (shared Stage 1, one search per epsilon group, prefetch) | {pt:.1f} | "
              f"{3600 * n_jobs / pt:.0f} | {bt / pt:.2f} | {'yes' if same else 'NO: ' + str(diffs[-1][:3])} | "
              f"{load_avg()} |")
        if a.json:
            Path(a.json).write_text(json.dumps({"jobs": n_jobs, "k": a.k, "baseline_s": base_t, "planned_s": plan_t,
                                                "speedup": bt / pt, "identical": same, "load": load_avg()}, indent=2))
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
