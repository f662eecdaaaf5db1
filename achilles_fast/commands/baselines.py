"""``achilles-fast baselines MODEL``: the registered rankers side by side (sensitivity and the baselines), same
Stage 2."""
from __future__ import annotations

import sys

from ..utils import positive_int, positive_int_arg
from . import add_model_args, check_output, load, print_paths, read_text, save_output, write_json


def register(sub) -> None:
    from ..method.config import FindConfig
    from ..method.rankers import paper_variants, ranker_names
    from ..studies.baselines import PAPER_LEVELS, POOLS, default_methods
    p = sub.add_parser("baselines", help="critical sets and curves of baseline rankers (random, activation, "
                       "gradient, taylor, superweight, ...) next to the sensitivity ranking")
    add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", default=None, help="text as a string (default: built-in passage)")
    g.add_argument("--text-file", default=None, help="text from a UTF-8 file")
    FindConfig.add_arguments(p, exclude=["ranker"])
    variants = ", ".join(f"{v} / {m}" for m, v in paper_variants().items())
    p.add_argument("--methods", default=",".join(default_methods()),
                   help="comma-separated rankers: " + ",".join(ranker_names()) + " (default: all but the paper's "
                   "variants)")
    p.add_argument("--signed-per-entry", action="store_true",
                   help="the paper's activation and gradient baselines: rank signed (module, position, channel) "
                   f"entries, descending (runs {variants} in place of the ranker after the slash; default: ours, "
                   "mean |value| over positions)")
    p.add_argument("--pool", default=None, choices=POOLS,
                   help="random: the paper's protocol, masking random draws of each --levels size from this pool "
                   "(all-linear: every Linear output, lm_head included, as the paper; targets: the scanned "
                   "modules), --runs draws per level, mean +- std (default: ours, one random ranking searched by "
                   "Stage 2)")
    p.add_argument("--runs", type=positive_int_arg, default=None,
                   help="random draws per level for the paper's protocol (the "
                   "paper: 10; given alone, the pool is the scanned targets)")
    p.add_argument("--levels", default=None, help="comma-separated numbers of random channels for the paper's "
                   f"protocol (default: {','.join(map(str, PAPER_LEVELS))})")
    p.add_argument("--out", default=None, help="write {method: result} as JSON")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the curves plot (PNG and SVG)")
    p.set_defaults(func=run)


def _levels(spec):
    from ..studies.baselines import PAPER_LEVELS
    if spec is None:
        return list(PAPER_LEVELS)
    try:
        levels = [positive_int(int(x), "--levels") for x in spec.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels:
        raise ValueError(f"--levels: expected comma-separated integers >= 1, got {spec!r}")
    return levels


def run(args) -> int:
    from ..method.config import FindConfig
    from ..studies.baselines import (compare_rankers, comparison_record, comparison_table, random_levels,
                                     select_methods)
    cfg = FindConfig.from_args(args)
    methods = select_methods([m.strip() for m in args.methods.split(",") if m.strip()], args.signed_per_entry)
    paper_random = args.pool is not None or args.runs is not None or args.levels is not None
    if paper_random:
        if "random" not in methods:
            raise ValueError("--pool / --runs / --levels set the random baseline's protocol: add random to --methods")
        levels = _levels(args.levels)
        methods.remove("random")
    check_output(args.out, "--out")
    check_output(args.plot, "--plot", folder=True)
    text = read_text(args)
    model, tok, name = load(args)
    results = compare_rankers(model, tok, text, methods, config=cfg)
    rnd = None
    if paper_random:
        rnd = random_levels(model, tok, text, levels=levels, runs=args.runs or 10, pool=args.pool or "targets",
                            seed=cfg.seed, scope=cfg.scope, max_tokens=cfg.max_tokens,
                            max_batch_tokens=cfg.max_batch_tokens, discover=cfg.discover)
    print(comparison_table(results, rnd, model_name=name, epsilon=cfg.epsilon, max_neurons=cfg.max_neurons))
    ok = True
    if args.out:
        out = comparison_record(results, rnd, model_name=name)
        ok &= save_output(args.out, "--out", lambda p: write_json(out, p))
    if args.plot:
        from ..studies.plots import curves_figure, save
        fig = curves_figure(results, title=f"{name.rsplit('/', 1)[-1]}: rankers", random=rnd)
        ok &= save_output(args.plot, "--plot", lambda d: print_paths(save(fig, d, "baselines_curves"), sys.stdout),
                          folder=True)
    return 0 if ok else 2
