"""``achilles-fast sweep SPEC.yaml``: checkpoints x texts x parameter grids into a SQLite DB (resumable)."""
from __future__ import annotations

import sys

from ..utils import positive_int_arg

EXAMPLE = """spec example (YAML):
  db: sweep.db
  checkpoints: [/data/stories260K, smollm2-135m, {name: mine, path: ./model.gguf}]
  texts: [default, {name: wiki, file: wiki.txt}]
  params: {max_tokens: 256, k: 20}
  grid: {epsilon: [0.5, 1.0], ranker: [sensitivity, random, superweight]}
  ray: {num_gpus: 1, num_cpus: 1, retries: 2}

Re-running the same command resumes: jobs whose key is already in the database are skipped.
Then: achilles-fast report sweep.db --csv runs.csv --plot plots/"""


def register(sub) -> None:
    import argparse
    p = sub.add_parser("sweep", help="run (or resume) a sweep over checkpoints x texts x parameters",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="sweep spec (YAML): checkpoints, texts, params, grid (see achilles_fast.studies.sweep)")
    p.add_argument("--db", default=None, help="SQLite file for the rows (default: the spec's 'db')")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run one Ray task per checkpoint on this cluster ('auto', 'ray://host:port', or 'local')")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per Ray task (default: spec, else 0)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs per Ray task (default: spec, else 1)")
    p.add_argument("--retries", type=int, default=None, help="resubmissions of a crashed Ray task (default 2)")
    p.add_argument("--workers", type=positive_int_arg, default=1,
                   help="local worker processes splitting the jobs (default 1: this process)")
    p.add_argument("--threads", type=positive_int_arg, default=None,
                   help="torch intra-op threads per worker (default: cores // workers)")
    p.add_argument("--no-prefetch", action="store_true", help="do not load the next checkpoint in the background")
    p.add_argument("--dry-run", action="store_true",
                   help="list the jobs, their Stage 1 units and what is already done; run nothing, create nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..studies.sweep import SweepSpec, run_sweep
    from ..studies.sweep.db import check_db_path, validate_db
    from ..studies.sweep.dry_run import dry_run
    from ..threads import worker_threads
    spec = SweepSpec.load(args.spec)
    db = args.db or spec.db
    if not db:
        raise ValueError("no database: pass --db FILE or set 'db' in the spec")
    worker_threads(args.workers, args.threads)  # bad counts: one line before anything starts
    if args.ray is not None and args.workers != 1:
        raise ValueError("choose one: --ray (Ray tasks) or --workers (local processes)")
    if args.dry_run:
        print("\n".join(dry_run(spec, db)))
        return 0
    check_db_path(db)  # a folder, not writable: one line before any model loads
    from ..utils import check_not_input, path_inputs
    check_not_input(db, path_inputs(args.spec, "the sweep spec") + spec.inputs(), "--db")  # written over no input
    validate_db(db)  # not SQLite, another program's, a newer schema: the same

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    rep = run_sweep(spec, db=db, ray_address=args.ray, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                    retries=args.retries, log=log, workers=args.workers, threads=args.threads,
                    prefetch=not args.no_prefetch)
    print(f"sweep: {rep.written} written, {rep.skipped} already done, "
          + (f"{rep.others} by other workers, " if rep.others else "")
          + f"{rep.failed} failed, {rep.total} total -> {db}")
    return 0 if rep.complete else 1
