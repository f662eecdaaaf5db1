"""``achilles-fast find MODEL``: run both stages, print the critical set, save JSON."""
from __future__ import annotations

import argparse
import sys

from . import add_model_args, add_text_args, load, read_text


def register(sub) -> None:
    p = sub.add_parser("find", help="find the critical neurons of a model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    add_text_args(p, "scoring text")
    p.add_argument("--eval-text-file", default=None, help="evaluation text for Stage 2 (default: the scoring text)")
    p.add_argument("--k", type=int, default=100, help="noisy samples")
    p.add_argument("--alpha", type=float, default=5.0, help="absolute noise std added to token embeddings")
    p.add_argument("--epsilon", type=float, default=1.0, help="stop when log10(PPL_masked/PPL_clean) >= epsilon")
    p.add_argument("--step", type=int, default=1, help="greedy step in number of neurons")
    p.add_argument("--max-neurons", type=int, default=1000, help="give up after this many neurons")
    p.add_argument("--scope", default="down_proj", choices=["down_proj", "all"], help="modules to scan")
    p.add_argument("--ranking", default="per_token", choices=["per_token", "max", "mean"])
    p.add_argument("--strategy", default="bisect", choices=["bisect", "linear"], help="Stage 2 search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="Stage 2 candidates per forward (default: auto)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="tokens per forward (default: auto)")
    p.add_argument("--max-score-mb", type=float, default=None,
                   help="memory for Stage 1's clean copies + score accumulators; above it targets are scored in groups "
                        "(default: a quarter of free memory)")
    p.add_argument("--stage1-dtype", default=None, choices=["bfloat16", "float16"],
                   help="run the Stage 1 forwards under autocast in this dtype (faster, ~1e-2 score rounding)")
    p.add_argument("--no-kernels", action="store_true", help="use the pure-PyTorch reference ops")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the curve and layer map (PNG and SVG) here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--discover", action="store_true",
                   help="model type not in the registry: scan modules named like an MLP down projection "
                        "(best effort; check the reported modules)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import find_critical
    from .. import api
    api.validate_params(args.k, args.alpha, args.epsilon, args.step, args.max_neurons, args.scope, args.ranking,
                        args.strategy, args.max_tokens, args.max_score_mb)  # fail before loading anything
    text = read_text(args)
    eval_text = None
    if args.eval_text_file:
        with open(args.eval_text_file, encoding="utf-8") as f:
            eval_text = f.read()
    model, tok, name = load(args)
    res = find_critical(model, tok, text, eval_text=eval_text, max_tokens=args.max_tokens, k=args.k,
                        alpha=args.alpha, seed=args.seed, epsilon=args.epsilon, step=args.step,
                        max_neurons=args.max_neurons, scope=args.scope, ranking=args.ranking,
                        strategy=args.strategy, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                        max_score_mb=args.max_score_mb, kernels=not args.no_kernels, stage1_dtype=args.stage1_dtype,
                        progress=not args.quiet, discover=args.discover)
    res.model = name
    print_result(res)
    if args.out:
        res.to_json(args.out)
        print(f"saved {args.out}", file=sys.stderr)
    if args.plot:
        from ..plots import plot_result
        for path in plot_result(res, args.plot, "find"):
            print(f"plot {path}", file=sys.stderr)
    return 0 if res.converged else 1


def print_result(res) -> None:
    """Summary table on stdout (rich when available)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(res.summary())
        return
    con = Console()
    head = Table(show_header=False, box=None)
    head.add_row("model", res.model)
    head.add_row("critical set", f"{len(res.neurons)} neuron(s)" + ("" if res.converged else " (NOT converged)"))
    from ..result import _fmt_ppl
    head.add_row("clean PPL", _fmt_ppl(res.clean_nll))
    head.add_row("masked PPL", _fmt_ppl(res.final_nll))
    head.add_row("log10 PPL ratio", "n/a" if res.log10_ratio is None else f"{res.log10_ratio:.4f} (epsilon {res.epsilon})")
    head.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))
    con.print(head)
    if res.neurons:
        t = Table(title="critical neurons (ranking order)")
        for col in ("#", "neuron", "layer", "kind", "score"):
            t.add_column(col, justify="right" if col in ("#", "layer", "score") else "left")
        for i, n in enumerate(res.neurons):
            t.add_row(str(i + 1), n.name, "" if n.layer is None else str(n.layer), n.kind, f"{n.score:.4g}")
        con.print(t)
