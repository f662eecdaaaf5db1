"""A sweep worker: claims units of the database by lease, runs them, writes their rows; several workers (processes,
hosts, Ray drivers) split one database.

The loop: take the first unit that is not done, not tried by this worker yet, not failed since this worker
started, and whose lease it can take (free or stale); prefer the checkpoint already loaded; run it; release the
lease. When every remaining unit is leased by live workers, wait for them (taking over leases that go stale).
It ends when the database is complete or every remaining unit failed in this round. A heartbeat thread keeps the
worker's leases fresh. ``python -m achilles_fast.studies.sweep.worker`` runs one worker process (``sweep
--workers N``): the spec comes as JSON on stdin, and the worker's counts go to stdout as one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from ...method.callbacks import calling_between_forwards
from ...threads import CoreShare
from .db import LEASE_TTL, SweepDB, SweepDBError
from .jobs import Loaded, _error, run_unit
from .plan import Unit
from .prefetch import Prefetcher
from .spec import Checkpoint, _now

POLL_S = 1.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Refreshes the heartbeat of ``worker``'s leases every ``every`` seconds from a thread (its own connection)."""

    def __init__(self, db: str, worker: str, every: float = LEASE_TTL / 8):
        self.db, self.worker, self.every = db, worker, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30.0, isolation_level=None)
        try:
            while not self._stop.wait(self.every):
                try:
                    conn.execute("UPDATE leases SET heartbeat=? WHERE worker=?", (time.time(), self.worker))
                except sqlite3.Error:
                    pass  # busy: next beat
        finally:
            conn.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


class Pending:
    """What is left of a list of units, as seen by one worker: not done, not tried by it, not failed elsewhere
    since it started."""

    def __init__(self, units: Sequence[Unit], store: SweepDB, since: str):
        self.units, self.store, self.since = list(units), store, since
        self.tried: set = set()
        self.all_keys = [k for u in self.units for k in u.keys]

    def missing(self, u: Unit, done: set) -> List:
        return [j for j in u.jobs if j.key not in done]

    def open(self) -> List[Unit]:
        done = self.store.done_keys(self.all_keys)
        failed = self.store.error_keys_since(self.since)
        return [u for u in self.units if u.key not in self.tried
                and any(k not in done and k not in failed for k in u.keys)]

    def complete(self) -> bool:
        return len(self.store.done_keys(self.all_keys)) == len(self.all_keys)


def run_worker(units: Sequence[Unit], checkpoints: Dict[str, Checkpoint], db: str, sink: Callable[[Dict], None],
               log: Callable[[str], None] = print, worker: Optional[str] = None, ttl: float = LEASE_TTL,
               poll: float = POLL_S, prefetch: bool = True, share: Optional[CoreShare] = None) -> Dict[str, int]:
    """Run units from ``db`` until none is left for this worker; ``sink`` writes each item. -> counts.
    ``share``: the core share of sized workers (marked busy while a unit runs, rebalanced between its forwards)."""
    worker = worker or worker_id()
    since = _now(precise=True)
    current: Optional[str] = None
    loaded: object = None  # Loaded, or the exception its load raised
    counts = {"units": 0, "waits": 0}
    pre = Prefetcher(Loaded, enabled=prefetch)
    with SweepDB(db) as store, Heartbeat(db, worker, every=min(ttl / 8, 15.0)):
        pending = Pending(units, store, since)
        try:
            while True:
                cand = pending.open()
                if not cand:
                    break
                cand.sort(key=lambda u: u.checkpoint != current)  # stable: the loaded checkpoint first
                unit = next((u for u in cand if store.claim(u.key, worker, ttl)), None)
                if unit is None:  # all held by live workers: wait for them (or for their leases to go stale)
                    counts["waits"] += 1
                    time.sleep(poll)
                    continue
                pending.tried.add(unit.key)
                try:
                    with _sharing(share):  # sized workers: the busy ones share the cores of those waiting or gone
                        jobs = pending.missing(unit, store.done_keys(unit.keys))
                        if unit.checkpoint != current:
                            loaded = None  # free the previous model before loading the next
                            loaded = pre.take(unit.checkpoint) or _load(checkpoints[unit.checkpoint])
                            current = unit.checkpoint
                            nxt = next((u.checkpoint for u in cand if u.checkpoint != current), None)
                            if nxt is not None and not isinstance(loaded, Exception):
                                pre.start(checkpoints[nxt])
                        if isinstance(loaded, Exception):
                            for j in jobs:
                                sink(_error(j, loaded))
                        else:
                            stored = store.rankings([unit.key])
                            for item in run_unit(loaded, unit, jobs, stored):
                                sink(item)
                        counts["units"] += 1
                finally:
                    store.release(unit.key, worker)
        finally:
            pre.close()
            store.release_all(worker)
    counts.update(prefetched=pre.started, prefetch_skipped=pre.skipped)
    return counts


@contextlib.contextmanager
def _sharing(share: Optional[CoreShare]) -> Iterator[None]:
    """One unit's block: this worker counts as busy in ``share`` and takes its share of the idle cores between the
    method's forwards (no-op without a share)."""
    if share is None:
        yield
        return
    with share.busy(), calling_between_forwards(share.rebalance):
        yield


def _load(ck: Checkpoint):
    try:
        return Loaded(ck)
    except Exception as e:  # every job of this checkpoint becomes an error row
        return e


# ---- one worker process (sweep --workers N) ------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="one sweep worker process (started by `achilles-fast sweep --workers`)")
    ap.add_argument("--db", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--name", default="worker")
    ap.add_argument("--no-prefetch", action="store_true")
    a = ap.parse_args(argv)
    from ...threads import SHARE_VAR, set_threads
    set_threads(a.threads)  # the environment already holds the OpenMP/MKL counts (set by the parent)
    folder = os.environ.get(SHARE_VAR)
    share = CoreShare(folder) if folder else None  # sized workers: the busy ones take the cores of the idle ones
    from .plan import plan_sweep
    from .sink import _Sink
    from .spec import SweepSpec
    spec = SweepSpec.from_dict(json.load(sys.stdin))

    def log(s: str) -> None:
        print(f"[{a.name}] {s}", file=sys.stderr, flush=True)

    units, _ = plan_sweep(spec)
    with SweepDB(a.db) as store:
        sink = _Sink(store, len([k for u in units for k in u.keys]), 0, log)
        try:
            counts = run_worker(units, {c.name: c for c in spec.checkpoints}, a.db, sink, log=log,
                                prefetch=not a.no_prefetch, share=share)
        except SweepDBError as e:  # the database cannot be written (disk full): one line, the rows kept say where
            log(f"error: {e}")
            return 2
    print(json.dumps(dict(counts, written=sink.written, failed=sink.failed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
