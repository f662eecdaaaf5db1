"""``achilles-fast evaluate MODEL --neurons result.json --corpus FILE | --tasks T1,T2``: with and without the mask,
corpus perplexity, or lm-evaluation-harness tasks side by side.

A text corpus is cut into WikiText-style windows; a JSON-lines corpus (``.jsonl``, ``.jsonl.gz``, C4's ``.json.gz``,
or any file with ``--field``) is evaluated sample by sample like the paper's C4 evaluator.
"""
from __future__ import annotations

from . import add_model_args, check_output, load, print_report, read_text_file, save_output, write_json
from ..method.result import read_neurons
from ..utils import positive_int, positive_int_arg


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="corpus perplexity or lm-eval downstream tasks, with and without a mask")
    add_model_args(p)
    p.add_argument("--neurons", required=True, help="result.json from `find`, or comma-separated neuron names")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--corpus", help="UTF-8 text file (e.g. wiki.test.raw): windowed perplexity; or JSON lines "
                      "(.jsonl, .jsonl.gz, .json.gz: one record per line, e.g. a C4 shard): per-sample perplexity")
    what.add_argument("--tasks", help="lm-evaluation-harness tasks, comma-separated (e.g. arc_easy,hellaswag); "
                                      "needs pip install 'achilles_fast[eval]'")
    p.add_argument("--field", default=None, help="--corpus JSON lines: the record field holding the text (default: "
                   "text; given, the corpus is read as JSON lines whatever its name)")
    p.add_argument("--max-tokens", type=int, default=512, help="--corpus JSON lines: each sample truncated to its "
                   "first N tokens (default: 512, the paper's C4 setting)")
    p.add_argument("--max-samples", type=positive_int_arg, default=None,
                   help="--corpus JSON lines: use the first N records")
    p.add_argument("--window", type=int, default=256, help="--corpus: tokens per window (non-overlapping)")
    p.add_argument("--max-windows", type=int, default=None, help="--corpus: use at most this many windows")
    p.add_argument("--no-bos", action="store_true", help="--corpus: do not prefix each window with BOS")
    p.add_argument("--limit", type=float, default=None,
                   help="--tasks: at most N examples per task (a value below 1: that fraction)")
    p.add_argument("--num-fewshot", type=int, default=None, help="--tasks: few-shot examples (default: the task's)")
    p.add_argument("--batch-size", default="1", help="--tasks: lm-eval batch size (an integer or auto)")
    p.add_argument("--include-path", action="append", default=None, metavar="DIR",
                   help="--tasks: folder of your own lm-eval task YAMLs (repeatable)")
    p.add_argument("--apply-chat-template", action="store_true", help="--tasks: format prompts with the model's chat "
                                                                    "template (instruct models, generative tasks)")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="--tasks: allow tasks that execute model-written code (e.g. humaneval)")
    p.add_argument("--out", default=None, help="write the evaluation as JSON here (--tasks default: "
                                               "evaluate_tasks.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.result import read_neurons
    names, _ = read_neurons(args.neurons)
    if not names:
        raise ValueError(f"{args.neurons} holds no neurons (did `find` converge?)")
    if args.tasks is not None:
        return run_tasks(args, names)
    from ..method.api import evaluate_corpus
    from ..method.text import check_windows, is_jsonl, read_jsonl_texts
    check_output(args.out, "--out")
    jsonl = args.field is not None or is_jsonl(args.corpus)
    if not jsonl:
        check_windows(args.window, args.max_windows)  # before the model loads
    if args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    if not jsonl and args.max_samples is not None:
        raise ValueError("--max-samples applies to JSON-lines corpora (use --max-windows for text)")
    if jsonl:
        corpus = read_jsonl_texts(args.corpus, args.field or "text")[:args.max_samples]
    else:
        corpus = read_text_file(args.corpus, "--corpus")
    model, tok, name = load(args)
    r = evaluate_corpus(model, tok, names, corpus, window=args.window, max_windows=args.max_windows,
                        bos=not args.no_bos, max_tokens=args.max_tokens)
    r.update(model=name, corpus=args.corpus)
    if jsonl:
        what = (f"{args.corpus}: {r['samples']} sample(s), each <= {r['max_tokens']} tokens, {r['n_tokens']} tokens"
                + (f" ({r['skipped_samples']} under 2 tokens skipped)" if r["skipped_samples"] else ""))
    else:
        what = f"{args.corpus}: {r['windows']} window(s) x {r['window']} tokens"
    ok = print_report([("model", name), ("corpus", what),
                       ("neurons masked", r["n_neurons"]), ("clean log10 PPL", f"{r['log10_clean_ppl']:.4f}"),
                       ("masked log10 PPL", f"{r['log10_masked_ppl']:.4f}"),
                       ("log10 PPL ratio", f"{r['log10_ratio']:.4f}")], r, args.out)
    return 0 if ok else 2


def _limit(x):
    if x is None:
        return None
    if x <= 0:
        raise ValueError(f"--limit must be positive, got {x:g}")
    return int(x) if x >= 1 and float(x).is_integer() else x


def run_tasks(args, names) -> int:
    from ..models.loading import model_source
    from ..studies.downstream import check_tasks, evaluate_tasks, format_table, task_manager
    limit = _limit(args.limit)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    batch = args.batch_size
    if not batch.startswith("auto"):
        try:
            batch = positive_int(int(batch), "--batch-size")
        except ValueError:
            raise ValueError(f"--batch-size must be a positive integer or auto, got {batch!r}") from None
    out = args.out or "evaluate_tasks.json"
    check_output(out, "--out")
    manager = task_manager(args.include_path)  # lm-eval installed? tasks known? before loading the model
    tasks = check_tasks(args.tasks, manager)
    model, tok, name = load(args)
    r = evaluate_tasks(model, tok, names, tasks, limit=limit, num_fewshot=args.num_fewshot, batch_size=batch,
                       manager=manager, apply_chat_template=args.apply_chat_template,
                       confirm_run_unsafe_code=args.confirm_run_unsafe_code)
    r.update(model=name, source=model_source(model))
    print(f"model {name}, {r['n_masked']} neuron(s) masked" + (f", limit {limit}" if limit else ""))
    print(format_table(r["rows"]))
    return 0 if save_output(out, "--out", lambda p: write_json(r, p)) else 2
