"""``achilles-fast baselines MODEL``: sensitivity ranking vs the paper's baseline rankers, same Stage 2."""
from __future__ import annotations

import sys

from . import add_model_args, check_output, load, print_paths, read_text, save_output, write_json


def register(sub) -> None:
    from ..method.config import FindConfig
    from ..studies.baselines import METHODS
    p = sub.add_parser("baselines", help="critical sets and curves of baseline rankers (random, activation, "
                       "gradient, taylor, superweight) next to the sensitivity ranking")
    add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", default=None, help="text as a string (default: built-in passage)")
    g.add_argument("--text-file", default=None, help="text from a UTF-8 file")
    FindConfig.add_arguments(p, exclude=["ranker"])
    p.add_argument("--methods", default=",".join(("sensitivity",) + METHODS),
                   help="comma-separated rankers: sensitivity," + ",".join(METHODS))
    p.add_argument("--out", default=None, help="write {method: result} as JSON")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the curves plot (PNG and SVG)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.config import FindConfig
    from ..studies.baselines import METHODS, compare_rankers
    cfg = FindConfig.from_args(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("sensitivity",) + METHODS]
    if bad:
        raise ValueError(f"unknown ranker(s) {bad}: expected sensitivity or one of {', '.join(METHODS)}")
    check_output(args.out, "--out")
    check_output(args.plot, "--plot", folder=True)
    text = read_text(args)
    model, tok, name = load(args)
    results = compare_rankers(model, tok, text, methods, config=cfg)
    print(f"model {name}  (epsilon {cfg.epsilon}, max {cfg.max_neurons} neurons)")
    print(f"{'ranker':<12} {'critical':>8}  {'log10 ratio':>11}  {'evaluated points':>16}")
    for m, r in results.items():
        r.model = name
        n = str(len(r.neurons)) if r.converged else f">{cfg.max_neurons}"
        lr = "n/a" if r.log10_ratio is None else f"{r.log10_ratio:.3f}"
        print(f"{m:<12} {n:>8}  {lr:>11}  {len(r.curve):>16}")
    ok = True
    if args.out:
        ok &= save_output(args.out, "--out", lambda p: write_json({m: r.to_dict() for m, r in results.items()}, p))
    if args.plot:
        from ..studies.plots import curves_figure, save
        fig = curves_figure(results, title=f"{name.rsplit('/', 1)[-1]}: rankers")
        ok &= save_output(args.plot, "--plot", lambda d: print_paths(save(fig, d, "baselines_curves"), sys.stdout),
                          folder=True)
    return 0 if ok else 2
