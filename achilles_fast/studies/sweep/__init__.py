"""Sweeps: checkpoints x texts x parameter grids, streamed into a SQLite database, locally or on Ray.

``spec`` (the YAML spec and job keys), ``jobs`` (running one checkpoint's jobs), ``db`` (the SQLite store), ``ray``
(one Ray task per checkpoint); ``run_sweep`` here drives them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Union

from .db import SweepDB
from .jobs import run_checkpoint
from .spec import Job, SweepSpec, _now

__all__ = ["SweepSpec", "SweepDB", "SweepReport", "run_sweep", "run_checkpoint"]


@dataclasses.dataclass
class SweepReport:
    total: int
    skipped: int  # already in the database when the run started
    written: int
    failed: int
    retries: int = 0

    @property
    def complete(self) -> bool:
        return self.skipped + self.written == self.total


class _Sink:
    """Writes what run_checkpoint yields to the database and reports progress."""

    def __init__(self, db: SweepDB, total: int, done: int, log: Callable[[str], None]):
        self.db, self.total, self.done, self.log = db, total, done, log
        self.written = self.failed = 0

    def __call__(self, item: Dict[str, Any]) -> None:
        if "error" in item:
            self.failed += 1
            self.db.record_error(item["key"], item["checkpoint"], item["text"], item["params"], item["error"], _now())
            self.log(f"FAILED {item['checkpoint']} / {item['text']}: {item['error']}")
            return
        if self.db.insert(item):
            self.written += 1
            self.done += 1
        lr = item["log10_ratio"]
        self.log(f"[{self.done}/{self.total}] {item['checkpoint']} / {item['text']} / "
                 f"{_short_params(item['params'])}: {item['n_critical']} neuron(s)"
                 f"{'' if item['converged'] else ' (not converged)'}, log10 ratio "
                 f"{'n/a' if lr is None else f'{lr:.3f}'} ({item['seconds']:.1f}s)")


def _short_params(p: Dict[str, Any]) -> str:
    keys = ("ranker", "epsilon", "k", "alpha", "seed", "max_neurons", "scope", "max_tokens")
    return " ".join(f"{k}={p[k]}" for k in keys if k in p)


def _by_checkpoint(spec: SweepSpec, pending: List[Job]):
    out = []
    for c in spec.checkpoints:
        js = [dataclasses.asdict(j) for j in pending if j.checkpoint == c.name]
        if js:
            out.append((dataclasses.asdict(c), js))
    return out


def run_sweep(spec: Union[SweepSpec, Dict[str, Any], str], db: Optional[str] = None, ray_address: Optional[str] = None,
              num_gpus: Optional[float] = None, num_cpus: Optional[float] = None, retries: Optional[int] = None,
              log: Optional[Callable[[str], None]] = print) -> SweepReport:
    """Run (or resume) a sweep; rows go to the SQLite file ``db`` (default: the spec's ``db``).

    ray_address: None runs locally in this process; "auto"/"ray://..."/an address connects to a Ray cluster,
    "local" starts one here (an already initialised Ray is reused). One Ray task per checkpoint.
    """
    if isinstance(spec, str):
        spec = SweepSpec.load(spec)
    elif isinstance(spec, dict):
        spec = SweepSpec.from_dict(spec)
    db = db or spec.db
    if not db:
        raise ValueError("no database: pass db= (CLI --db) or set 'db' in the spec")
    log = log or (lambda s: None)
    jobs = spec.jobs()
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("sweep spec: two jobs have the same key (duplicate texts or grid values?)")
    with SweepDB(db) as store:
        done = store.done_keys(keys)
        pending = [j for j in jobs if j.key not in done]
        log(f"sweep: {len(jobs)} job(s), {len(done)} already in {db}, {len(pending)} to run"
            f"{'' if ray_address is None else f' on Ray ({ray_address})'}")
        sink = _Sink(store, len(jobs), len(done), log)
        groups = _by_checkpoint(spec, pending)
        rcfg = dict(spec.ray)
        retries = int(rcfg.get("retries", 2) if retries is None else retries)
        n_retries = 0
        if ray_address is None:
            for ck, js in groups:
                for item in run_checkpoint(ck, js):
                    sink(item)
        else:
            from .ray import run_on_ray  # Ray is optional: imported only for --ray
            n_retries = run_on_ray(groups, sink, store, ray_address,
                                   num_gpus=float(rcfg.get("num_gpus", 0) if num_gpus is None else num_gpus),
                                   num_cpus=float(rcfg.get("num_cpus", 1) if num_cpus is None else num_cpus),
                                   retries=retries, log=log)
        return SweepReport(total=len(jobs), skipped=len(done), written=sink.written, failed=sink.failed,
                           retries=n_retries)

