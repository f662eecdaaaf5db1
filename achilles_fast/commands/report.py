"""``achilles-fast report DB``: summary tables across checkpoints, CSV/JSON export, plots."""
from __future__ import annotations

import os
import sys

from . import check_output, print_paths, save_output


def register(sub) -> None:
    p = sub.add_parser("report", help="summarise a sweep database (tables, CSV/JSON, plots)")
    p.add_argument("db", help="SQLite file written by `achilles-fast sweep`")
    p.add_argument("--csv", default=None, help="write one flat row per run here")
    p.add_argument("--summary-csv", default=None, help="write the per-checkpoint summary here")
    p.add_argument("--json", default=None, help="write summary + full rows (params, versions, results) here")
    p.add_argument("--plot", default=None, metavar="DIR", help="write plots (PNG and SVG) into DIR")
    p.add_argument("--no-run-plots", action="store_true", help="with --plot: only the per-checkpoint plot")
    p.add_argument("--runs", action="store_true", help="also print one line per run")
    p.add_argument("--format", default=None, choices=("csv", "json", "parquet"),
                   help="write one flat row per run in this format to --out (parquet needs pyarrow)")
    p.add_argument("--out", default=None, help="with --format: the file (default: stdout for csv and json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..studies.sweep.report import (RUN_COLUMNS, SUMMARY_COLUMNS, flat_row, load_rows, open_errors, summarize, table_text,
                          write_csv, write_runs_json, write_table)
    if not os.path.isfile(args.db):
        raise FileNotFoundError(f"{args.db}: no such sweep database")
    if args.format == "parquet" and not args.out:
        raise ValueError("--format parquet needs --out FILE")
    if args.out and not args.format:
        raise ValueError("--out goes with --format csv|json|parquet")
    if args.format == "parquet":
        from ..studies.sweep.report import require
        require("pyarrow", "--format parquet", "pyarrow")  # before any work
    for flag, path in (("--csv", args.csv), ("--summary-csv", args.summary_csv), ("--json", args.json),
                       ("--out", args.out)):
        check_output(path, flag)  # every output, before the database is read
    check_output(args.plot, "--plot", folder=True)
    rows = load_rows(args.db)
    for e in open_errors(args.db):
        print(f"failed, no row yet: {e['checkpoint']} / {e['text']}: {e['error']} (re-run the sweep to retry)",
              file=sys.stderr)
    if not rows:
        print(f"{args.db}: no finished runs yet")
        return 1
    summary = summarize(rows)
    flat = [flat_row(r) for r in rows]
    if args.format and not args.out:  # the table itself on stdout, nothing else
        write_table(flat, "-", args.format)
        return 0
    print(table_text(summary, SUMMARY_COLUMNS, title=f"{len(rows)} run(s) in {args.db}"))
    if args.runs:
        print()
        print(table_text(flat, RUN_COLUMNS))
    ok = True  # each output atomic; one that fails at the end goes to the temp folder (save_output says where)
    if args.csv:
        ok &= save_output(args.csv, "--csv", lambda p: write_csv(flat, p))
    if args.summary_csv:
        ok &= save_output(args.summary_csv, "--summary-csv", lambda p: write_csv(summary, p))
    if args.json:
        ok &= save_output(args.json, "--json", lambda p: write_runs_json(rows, p))
    if args.format:
        ok &= save_output(args.out, "--out", lambda p: write_table(flat, p, args.format))
    if args.plot:
        from ..studies.plots import plot_sweep
        ok &= save_output(args.plot, "--plot", lambda d: print_paths(plot_sweep(rows, d, per_row=not args.no_run_plots),
                                                                      sys.stdout), folder=True)
    return 0 if ok else 2
