"""``achilles-fast compare CKPT CKPT ... --out DIR``: do critical neurons persist, transfer and emerge across
checkpoints?"""
from __future__ import annotations

import sys

from . import add_text_args, read_text


def register(sub) -> None:
    from ..method.config import FindConfig
    from ..studies.compare import ORDERS, CompareParams
    d = CompareParams()
    p = sub.add_parser("compare", help="compare the critical sets of several checkpoints (fine-tunes, quantisations, "
                                       "training steps): overlap, transfer, persistence, series")
    p.add_argument("checkpoints", nargs="*", metavar="CKPT",
                   help="two or more checkpoints of one architecture (anything find takes: hub ids with @revision, "
                        "folders, GGUF files); none with --db: compare that sweep database's finished rows")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for compare.json, report.md, report.html, figures/ (and compare.db)")
    p.add_argument("--db", default=None, help="sweep database of the finds (default: OUT/compare.db; resumable)")
    p.add_argument("--order", default=d.order, choices=ORDERS,
                   help="series order: given, or revision (`...@stepN` sorted numerically) (default: given)")
    p.add_argument("--top-k", type=int, default=d.top_k,
                   help=f"channels per checkpoint for the Spearman correlation and the series (default: {d.top_k})")
    p.add_argument("--random-seeds", type=int, default=d.random_seeds,
                   help=f"random sets per transfer cell (default: {d.random_seeds})")
    p.add_argument("--workers", type=int, default=1, help="local worker processes for the finds (default 1)")
    add_text_args(p, "scoring text", max_tokens=False)
    FindConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.config import FindConfig
    from ..studies.compare import compare
    cfg = FindConfig.from_args(args)  # fail before loading anything
    text = read_text(args)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    doc = compare(args.checkpoints or None, args.out, db=args.db, text=text, order=args.order, top_k=args.top_k,
                  random_seeds=args.random_seeds, workers=args.workers, log=log, **cfg.params())
    names = [c["name"] for c in doc["checkpoints"]]
    w = max(len(n) for n in names) + 2
    for c in doc["checkpoints"]:
        what = (f"error: {c['error']}" if c["error"] else
                f"{c['n_critical']} neuron(s), log10 ratio {c['log10_ratio']:.3f}"
                + ("" if c["converged"] else " (not converged)"))
        print(f"{c['name']:<{w}}{what}")
    print(f"report: {args.out}/report.html")
    return 1 if any(c["error"] for c in doc["checkpoints"]) else 0
