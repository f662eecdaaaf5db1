"""``achilles-fast robustness MODEL --texts DIR``: critical sets on several texts and how much they overlap."""
from __future__ import annotations

import sys

from . import add_model_args, load, write_json


def add_search_args(p) -> None:
    """The find_critical knobs shared by robustness and baselines."""
    p.add_argument("--max-tokens", type=int, default=512, help="use the first N tokens of each text")
    p.add_argument("--k", type=int, default=100, help="noisy samples")
    p.add_argument("--alpha", type=float, default=5.0, help="noise std added to token embeddings")
    p.add_argument("--epsilon", type=float, default=1.0, help="log10 PPL ratio threshold")
    p.add_argument("--step", type=int, default=1)
    p.add_argument("--max-neurons", type=int, default=1000)
    p.add_argument("--scope", default="down_proj", choices=["down_proj", "all"])
    p.add_argument("--strategy", default="bisect", choices=["bisect", "linear"])
    p.add_argument("--seed", type=int, default=0)


def search_kwargs(args) -> dict:
    return dict(max_tokens=args.max_tokens, k=args.k, alpha=args.alpha, epsilon=args.epsilon, step=args.step,
                max_neurons=args.max_neurons, scope=args.scope, strategy=args.strategy, seed=args.seed)


def register(sub) -> None:
    p = sub.add_parser("robustness", help="overlap of critical sets found on several texts (Jaccard)")
    add_model_args(p)
    p.add_argument("--texts", required=True, metavar="DIR", help="folder of UTF-8 text files (one run each)")
    p.add_argument("--pattern", default="*.txt", help="file pattern inside --texts")
    add_search_args(p)
    p.add_argument("--out", default=None, help="write the overlap report (and every result) as JSON")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the Jaccard matrix plot (PNG and SVG)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..robustness import format_overlap, read_texts, robustness
    texts = read_texts(args.texts, args.pattern)
    model, tok, name = load(args)
    rep = robustness(model, tok, texts, **search_kwargs(args))
    rep["model"] = name
    print(f"model {name}: {len(texts)} text(s)")
    for n, ok, size in zip(rep["names"], rep["converged"], rep["sizes"]):
        print(f"  {n}: {size} neuron(s){'' if ok else ' (NOT converged)'}")
    print("\n".join(format_overlap(rep)))
    if args.out:
        write_json(rep, args.out)
        print(f"saved {args.out}", file=sys.stderr)
    if args.plot:
        from ..plots import jaccard_figure, save
        for p in save(jaccard_figure(rep["names"], rep["jaccard"]), args.plot, "robustness_jaccard"):
            print(f"plot {p}")
    return 0
