"""``achilles-fast find MODEL``: run both stages, print the critical set, save JSON."""
from __future__ import annotations

import sys

from . import (add_model_args, add_text_args, check_output, load, print_paths, quiet_loading, read_eval_text,
               read_text, save_output, write_json)


def register(sub) -> None:
    from ..method.config import FindConfig
    p = sub.add_parser("find", help="find the critical neurons of a model")
    add_model_args(p)
    add_text_args(p, "scoring text", max_tokens=False)
    p.add_argument("--eval-text-file", default=None, help="evaluation text for Stage 2 (default: the scoring text)")
    FindConfig.add_arguments(p)
    eps = next(a for a in p._actions if a.dest == "epsilon")
    eps.type, eps.help = _epsilons, eps.help + "; a comma-separated list (0.5,1,2) gives one result per value"
    p.add_argument("--out", default=None, help="write the result as JSON here (a list for an epsilon list)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the curve and layer map (PNG and SVG) here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--show-generation", nargs="?", const="The capital of France is", default=None, metavar="PROMPT",
                   help="also print clean vs masked greedy continuations of PROMPT (default prompt: 'The capital "
                        "of France is')")
    p.set_defaults(func=run)


def _epsilons(v: str):
    """--epsilon: a number, or a comma-separated list of them (as find_critical's epsilon=[...])."""
    return [float(x) for x in v.split(",")] if "," in v else float(v)


_epsilons.__name__ = "number or list"  # argparse names the type in its error message


def run(args) -> int:
    from ..method.api import find_critical
    from ..method.config import FindConfig
    epsilons = args.epsilon if isinstance(args.epsilon, list) else None
    cfg = FindConfig.from_args(args, epsilon=max(epsilons) if epsilons else args.epsilon)  # before loading anything
    if epsilons is not None:
        for e in epsilons:
            FindConfig.make(cfg, epsilon=e)  # every value validated like one epsilon
        if args.plot or args.show_generation is not None:
            raise ValueError("--plot and --show-generation take one --epsilon, not a list")
    check_output(args.out, "--out")
    check_output(args.plot, "--plot", folder=True)
    if args.show_generation is not None:
        from ..studies.generate import check_prompts
        check_prompts([args.show_generation])
    text = read_text(args)
    eval_text = read_eval_text(args)
    if args.quiet:
        quiet_loading()
    model, tok, name = load(args)
    if (args.device or "cpu") == "cpu":
        from ..threads import cpu_load_warning
        cpu_load_warning()
    if epsilons is not None:
        return _run_list(find_critical(model, tok, text, eval_text=eval_text, config=cfg, epsilon=epsilons,
                                       progress=not args.quiet), name, args.out)
    res = find_critical(model, tok, text, eval_text=eval_text, config=cfg, progress=not args.quiet)
    res.model = name
    print_result(res)
    if args.show_generation is not None:
        from ..studies.generate import generations, side_by_side
        if res.converged:
            print(side_by_side(generations(model, tok, res.names, [args.show_generation])))
        else:
            print("no generation shown: the search did not converge (no critical set)", file=sys.stderr)
    ok = True
    if args.out:
        ok &= save_output(args.out, "--out", res.to_json)
    if args.plot:
        from ..studies.plots import plot_result
        ok &= save_output(args.plot, "--plot", lambda d: print_paths(plot_result(res, d, "find")), folder=True)
    if not ok:
        return 2
    return 0 if res.converged else 1


def _run_list(results, name: str, out) -> int:
    """One result per epsilon: each printed, all saved as one JSON list."""
    for res in results:
        res.model = name
        print_result(res)
    if out and not save_output(out, "--out", lambda p: write_json([r.to_dict() for r in results], p)):
        return 2
    return 0 if all(r.converged for r in results) else 1


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
    from ..method.result import fmt_ppl
    head.add_row("clean PPL", fmt_ppl(res.clean_nll))
    head.add_row("masked PPL", fmt_ppl(res.final_nll))
    head.add_row("log10 PPL ratio", "n/a" if res.log10_ratio is None else f"{res.log10_ratio:.4f} (epsilon {res.epsilon})")
    if res.stage1_note():
        head.add_row("Stage 1 dtype", res.stage1_note())
    head.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))
    con.print(head)
    if res.neurons:
        t = Table(title="critical neurons (ranking order)")
        for col in ("#", "neuron", "layer", "kind", "score"):
            t.add_column(col, justify="right" if col in ("#", "layer", "score") else "left")
        for i, n in enumerate(res.neurons):
            t.add_row(str(i + 1), n.name, "" if n.layer is None else str(n.layer), n.kind, f"{n.score:.4g}")
        con.print(t)
