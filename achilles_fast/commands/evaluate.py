"""``achilles-fast evaluate MODEL --neurons result.json --corpus FILE``: corpus PPL with and without the mask.

A text file is cut into WikiText-style windows; a JSON-lines file (``.jsonl``, ``.jsonl.gz``, C4's ``.json.gz``, or
any file with ``--field``) is evaluated sample by sample like the paper's C4 evaluator.
"""
from __future__ import annotations

from . import add_model_args, load, print_report
from .mask import read_neurons


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="corpus perplexity with and without a mask: windowed text, or JSON-lines "
                       "samples (C4 style)")
    add_model_args(p)
    p.add_argument("--neurons", required=True, help="result.json from `find`, or comma-separated neuron names")
    p.add_argument("--corpus", required=True, help="UTF-8 text file (e.g. wiki.test.raw), or JSON lines (.jsonl, "
                   ".jsonl.gz, .json.gz: one record per line, e.g. a C4 shard)")
    p.add_argument("--field", default=None, help="JSON lines: the record field holding the text (default: text; "
                   "given, the corpus is read as JSON lines whatever its name)")
    p.add_argument("--max-tokens", type=int, default=512, help="JSON lines: each sample truncated to its first N "
                   "tokens (default: 512, the paper's C4 setting)")
    p.add_argument("--max-samples", type=int, default=None, help="JSON lines: use the first N records")
    p.add_argument("--window", type=int, default=256, help="text: tokens per window (non-overlapping)")
    p.add_argument("--max-windows", type=int, default=None, help="text: use at most this many windows")
    p.add_argument("--no-bos", action="store_true", help="text: do not prefix each window with BOS")
    p.add_argument("--out", default=None, help="write the evaluation as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.api import evaluate_corpus
    from ..method.text import is_jsonl, read_jsonl_texts
    names, _ = read_neurons(args.neurons)
    jsonl = args.field is not None or is_jsonl(args.corpus)
    for flag in ("max_samples", "max_windows"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    if not jsonl and args.max_samples is not None:
        raise ValueError("--max-samples applies to JSON-lines corpora (use --max-windows for text)")
    if jsonl:
        corpus = read_jsonl_texts(args.corpus, args.field or "text")[:args.max_samples]
    else:
        with open(args.corpus, encoding="utf-8") as f:
            corpus = f.read()
    model, tok, name = load(args)
    r = evaluate_corpus(model, tok, names, corpus, window=args.window, max_windows=args.max_windows,
                        bos=not args.no_bos, max_tokens=args.max_tokens)
    r.update(model=name, corpus=args.corpus, neurons=names)
    if jsonl:
        what = (f"{args.corpus}: {r['samples']} sample(s), each <= {r['max_tokens']} tokens, {r['n_tokens']} tokens"
                + (f" ({r['skipped_samples']} under 2 tokens skipped)" if r["skipped_samples"] else ""))
    else:
        what = f"{args.corpus}: {r['windows']} window(s) x {r['window']} tokens"
    print_report([("model", name), ("corpus", what),
                  ("neurons masked", r["n_neurons"]), ("clean log10 PPL", f"{r['log10_clean_ppl']:.4f}"),
                  ("masked log10 PPL", f"{r['log10_masked_ppl']:.4f}"), ("log10 PPL ratio", f"{r['log10_ratio']:.4f}")],
                 r, args.out)
    return 0
