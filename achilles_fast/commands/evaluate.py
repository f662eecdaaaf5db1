"""``achilles-fast evaluate MODEL --neurons result.json --corpus FILE``: windowed corpus PPL with/without the mask."""
from __future__ import annotations

from . import add_model_args, check_output, load, print_report, read_text_file
from .mask import read_neurons


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="WikiText-style windowed perplexity of a corpus with and without a mask")
    add_model_args(p)
    p.add_argument("--neurons", required=True, help="result.json from `find`, or comma-separated neuron names")
    p.add_argument("--corpus", required=True, help="UTF-8 text file (e.g. wiki.test.raw)")
    p.add_argument("--window", type=int, default=256, help="tokens per window (non-overlapping)")
    p.add_argument("--max-windows", type=int, default=None, help="use at most this many windows")
    p.add_argument("--no-bos", action="store_true", help="do not prefix each window with BOS")
    p.add_argument("--out", default=None, help="write the evaluation as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.api import evaluate_corpus
    check_output(args.out, "--out")
    names, _ = read_neurons(args.neurons)
    if not names:
        raise ValueError(f"{args.neurons} holds no neurons (did `find` converge?)")
    corpus = read_text_file(args.corpus, "--corpus")
    model, tok, name = load(args)
    r = evaluate_corpus(model, tok, names, corpus, window=args.window, max_windows=args.max_windows,
                        bos=not args.no_bos)
    r.update(model=name, corpus=args.corpus)
    ok = print_report([("model", name), ("corpus", f"{args.corpus}: {r['windows']} window(s) x {r['window']} tokens"),
                       ("neurons masked", r["n_neurons"]), ("clean log10 PPL", f"{r['log10_clean_ppl']:.4f}"),
                       ("masked log10 PPL", f"{r['log10_masked_ppl']:.4f}"),
                       ("log10 PPL ratio", f"{r['log10_ratio']:.4f}")], r, args.out)
    return 0 if ok else 2
