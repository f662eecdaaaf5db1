"""Sweeps: checkpoints x texts x parameter grids, streamed into a SQLite database, locally or on Ray.

``spec`` (the YAML spec and job keys), ``plan`` (units of jobs sharing one Stage 1, stored rankings), ``jobs``
(running units), ``worker`` (the one lease loop: several workers split one database; the local runner),
``prefetch`` (the next checkpoint loads in the background), ``db`` (the SQLite store), ``ray`` (the Ray runner),
``report`` (tables and summaries of a database); ``run_sweep`` here drives them.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Union

from ...threads import SHARE_VAR, load_warning, set_threads, thread_env, worker_threads
from ...utils import check_not_input
from .db import SweepDB
from .jobs import run_checkpoint
from .plan import plan_sweep
from .sink import _Sink
from .spec import SweepSpec
from .worker import run_worker

__all__ = ["SweepSpec", "SweepDB", "SweepReport", "run_sweep", "run_checkpoint", "plan_sweep"]


@dataclasses.dataclass
class SweepReport:
    total: int
    skipped: int  # already in the database when the run started
    written: int  # by this run
    failed: int
    retries: int = 0
    others: int = 0  # written meanwhile by other workers on the same database

    @property
    def complete(self) -> bool:
        return self.skipped + self.written + self.others >= self.total


def _as_spec(spec: Union[SweepSpec, Dict[str, Any], str]) -> SweepSpec:
    if isinstance(spec, str):
        return SweepSpec.load(spec)
    if isinstance(spec, dict):
        return SweepSpec.from_dict(spec)
    return spec


def run_sweep(spec: Union[SweepSpec, Dict[str, Any], str], db: Optional[str] = None, ray_address: Optional[str] = None,
              num_gpus: Optional[float] = None, num_cpus: Optional[float] = None, retries: Optional[int] = None,
              log: Optional[Callable[[str], None]] = print, workers: int = 1, threads: Optional[int] = None,
              prefetch: bool = True) -> SweepReport:
    """Run (or resume) a sweep; rows go to the SQLite file ``db`` (default: the spec's ``db``).

    Jobs sharing a Stage 1 run it once (stored in the database, reused by later runs), and jobs differing only in
    epsilon share one search. Workers claim units by lease, so several ``run_sweep`` calls (processes, hosts) on one
    database split the work; each returns when the database is complete or nothing is left it can do.
    ray_address: None runs locally; "auto"/"ray://..."/an address connects to a Ray cluster, "local" starts one
    here (an already initialised Ray is reused); one Ray task per checkpoint, with ``num_cpus`` intra-op threads.
    workers: local worker processes (each with ``threads`` intra-op threads, default cores // workers); 1 runs in
    this process (``threads`` then sets this process's count).
    """
    spec = _as_spec(spec)
    db = db or spec.db
    if not db:
        raise ValueError("no database: pass db= (CLI --db) or set 'db' in the spec")
    if ray_address is not None and workers != 1:
        raise ValueError("choose one: Ray tasks (ray_address) or local worker processes (workers)")
    n_threads = worker_threads(workers, threads)
    check_not_input(db, spec.inputs(), "the database")  # never written over a checkpoint
    log = log or (lambda s: None)
    units, jobs = plan_sweep(spec)
    keys = [j.key for j in jobs]
    with SweepDB(db) as store:
        if store.migrated_from:
            log(f"sweep: {db} migrated from schema {store.migrated_from} to {store.version} (rows kept)")
        done = store.done_keys(keys)
        n_units = sum(1 for u in units if any(k not in done for k in u.keys))
        log(f"sweep: {len(jobs)} job(s), {len(done)} already in {db}, {len(jobs) - len(done)} to run in {n_units} "
            f"Stage 1 unit(s)" + ("" if ray_address is None else f" on Ray ({ray_address})")
            + ("" if workers == 1 else f" by {workers} workers x {n_threads} thread(s)"))
        if ray_address is None:
            warn = load_warning(n_threads * workers, hint="--threads")  # sweep sizes its own threads
            if warn:
                log(warn)
        sink = _Sink(store, len(jobs), len(done), log)
        rcfg = dict(spec.ray)
        retries = int(rcfg.get("retries", 2) if retries is None else retries)
        n_retries = 0
        if ray_address is not None:
            from .ray import run_on_ray  # Ray is optional: imported only for --ray
            n_retries = run_on_ray(units, {c.name: c for c in spec.checkpoints}, sink, store, ray_address,
                                   num_gpus=float(rcfg.get("num_gpus", 0) if num_gpus is None else num_gpus),
                                   num_cpus=float(rcfg.get("num_cpus", 1) if num_cpus is None else num_cpus),
                                   retries=retries, log=log)
        elif workers == 1:
            if threads is not None:
                set_threads(n_threads)
            run_worker(units, {c.name: c for c in spec.checkpoints}, db, sink, log=log, prefetch=prefetch)
        else:
            got = _run_processes(spec, db, workers, n_threads, prefetch, log, share=threads is None)
            sink.written, sink.failed = got["written"], got["failed"]
        end = len(store.done_keys(keys))
    return SweepReport(total=len(jobs), skipped=len(done), written=sink.written, failed=sink.failed,
                       retries=n_retries, others=max(0, end - len(done) - sink.written))


def _run_processes(spec: SweepSpec, db: str, workers: int, threads: int, prefetch: bool,
                   log: Callable[[str], None], share: bool = True) -> Dict[str, int]:
    """``workers`` worker processes, each sized to ``threads`` before torch starts; -> summed counts.
    ``share``: the busy workers take over the cores of those waiting or done (``threads.CoreShare``)."""
    payload = json.dumps(spec.to_dict())
    procs = []
    with tempfile.TemporaryDirectory(prefix="achilles_fast_cores_") as folder:
        env = thread_env(threads)
        env.pop(SHARE_VAR, None)
        if share:
            env[SHARE_VAR] = folder
        for i in range(workers):
            cmd = [sys.executable, "-m", "achilles_fast.studies.sweep.worker", "--db", db, "--threads", str(threads),
                   "--name", f"w{i + 1}"] + ([] if prefetch else ["--no-prefetch"])
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env, text=True)
            p.stdin.write(payload)
            p.stdin.close()
            procs.append(p)
        try:
            while any(p.poll() is None for p in procs):  # polling reaps a dead worker at once (its leases free up)
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    total = {"written": 0, "failed": 0}
    for i, p in enumerate(procs):
        out = p.stdout.read().strip().splitlines()
        try:
            got = json.loads(out[-1])
        except (IndexError, ValueError):
            log(f"worker w{i + 1} exited with code {p.returncode} without a report")
            continue
        total["written"] += got["written"]
        total["failed"] += got["failed"]
    return total

