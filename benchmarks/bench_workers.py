"""Local sweep workers sized to the cores (issue 14): jobs/hour of one SmolLM2 sweep run as
1 worker x 2 threads, 2 workers sized (`--workers 2` alone: cores // workers threads each, and the busy workers take
over the cores of those waiting or done), 2 workers x 2 threads (unsized: each with torch's default, which
oversubscribes the cores). `2x1` (a fixed thread each, no core sharing) can be added to --configs.

Each configuration is `achilles-fast sweep SPEC --workers W [--threads T]` in a fresh database (one Stage 1 unit
per text, so workers can split the jobs), timed end to end, the load average printed beside it. Targets: two sized
workers >= 1.1x faster than one worker, and >= 2x faster than two unsized workers.

    python benchmarks/bench_workers.py                                     # SmolLM2, 4 texts, K=100
    python benchmarks/bench_workers.py --model ../shared/models/stories260K --texts 4 --k 20   # small check
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _throughput_common import load_avg, texts  # noqa: E402

CONFIGS = "1x2,2xsized,2x2"  # WORKERSxTHREADS; "sized": no --threads (cores // workers, cores shared when idle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--texts", type=int, default=4)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--configs", default=CONFIGS,
                    help=f"WORKERSxTHREADS,... with THREADS a number or 'sized' (default: {CONFIGS})")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all configurations, interleaved (medians)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import yaml

    from achilles_fast.threads import worker_threads
    configs = [(int(w), None if t == "sized" else int(t)) for w, t in (c.split("x") for c in a.configs.split(","))]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = {"checkpoints": [{"name": "m", "path": a.model}],
                "texts": [{"name": n, "text": t} if t is not None else "default" for n, t in texts(a.texts)],
                "params": {"k": a.k, "max_tokens": a.max_tokens}, "grid": {"epsilon": [1.0]}}
        (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
        n_jobs = a.texts
        # warm-up: convert/cache the model and fill the page cache
        subprocess.run([sys.executable, "-c", f"import achilles_fast as af; af.load_model({a.model!r})"], check=True)
        print(f"# bench_workers: {a.model}, {n_jobs} jobs (one per text), K={a.k}, {os.cpu_count()} cores")
        print("| round | workers x threads | seconds | jobs/hour | vs 1 worker (this round) | load before (1, 5, 15 min) |")
        print("|---|---|---|---|---|---|")
        for rnd in range(1, a.repeats + 1):  # rounds interleave the configurations: they share the host's state
            base = None
            for i, (w, t) in enumerate(configs):
                db = tmp / f"r{rnd}w{i}.db"
                la = load_avg()
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "achilles_fast.cli", "sweep", str(tmp / "spec.yaml"),
                                      "--db", str(db), "--workers", str(w), "--no-prefetch"]
                                     + ([] if t is None else ["--threads", str(t)]), capture_output=True, text=True)
                secs = time.perf_counter() - t0
                if out.returncode != 0:
                    print(out.stderr[-3000:])
                    raise SystemExit(f"sweep {w}x{t} failed ({out.returncode})")
                base = base or secs
                label = t or f"sized ({worker_threads(w)})"
                results.append({"round": rnd, "workers": w, "threads": label, "seconds": secs,
                                "jobs_per_hour": 3600 * n_jobs / secs, "load_before": la})
                print(f"| {rnd} | {w} x {label} | {secs:.1f} | {3600 * n_jobs / secs:.0f} | {base / secs:.2f} | {la} |",
                      flush=True)

    def med(w, t):
        xs = [r["seconds"] for r in results if r["workers"] == w and r["threads"] == t]
        return statistics.median(xs) if xs else None
    one, unsized = med(1, 2), med(2, 2)
    print(f"medians over {a.repeats} round(s):")
    for t in dict.fromkeys(r["threads"] for r in results if r["workers"] == 2 and r["threads"] != 2):
        if one:
            print(f"2 x {t} vs one worker 1 x 2: {one / med(2, t):.2f}x (target >= 1.1)")
        if unsized:
            print(f"2 x {t} vs unsized 2 x 2: {unsized / med(2, t):.2f}x (target >= 2)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
