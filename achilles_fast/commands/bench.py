"""``achilles-fast bench kernels|e2e|baseline [ARGS...]``: the benchmarks shipped in ``achilles_fast.bench``."""
from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = {
    "kernels": ("achilles_fast.bench.kernels", "each op vs the PyTorch expression it replaces, at real model shapes"),
    "e2e": ("achilles_fast.bench.e2e", "find_critical vs the paper-faithful baseline vs the Stage 1 floor"),
    "baseline": ("achilles_fast.bench.paper_baseline", "the paper's sequential procedure alone (slow on purpose)"),
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: kernels, end to end, paper baseline",
                       description="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items())
                       + ". Arguments after the benchmark's name go to it (`achilles-fast bench kernels --help`).")
    p.add_argument("which", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")
    p.set_defaults(func=run)


def run(args) -> int:
    mod = importlib.import_module(BENCHES[args.which][0])
    argv0 = sys.argv[0]
    sys.argv[0] = f"achilles-fast bench {args.which}"  # the benchmark's own parser names itself after argv[0]
    try:
        return int(mod.main(args.args) or 0)
    finally:
        sys.argv[0] = argv0
