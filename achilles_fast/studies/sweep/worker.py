"""A sweep worker: claims units of the database by lease, runs them, writes their rows; several workers (processes,
hosts, Ray drivers) split one database.

The loop (``lease_loop``, shared with the Ray driver, ``ray.py``): take the first unit that is not done, not
tried by this worker yet, not failed since this worker started, and whose lease it can take (free or stale); hand
it to the runner (``LocalRunner``: the checkpoint already loaded first; runs it, releases the lease). When every
remaining unit is leased by live workers, wait for them (taking over leases that go stale). It ends when the
database is complete or every remaining unit failed in this round. A heartbeat thread keeps the worker's leases
fresh. ``python -m achilles_fast.studies.sweep.worker`` runs one worker process (``sweep
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


def lease_loop(units: Sequence[Unit], store: SweepDB, runner: "Runner", worker: str, ttl: float = LEASE_TTL,
               poll: float = POLL_S) -> int:
    """The lease loop every worker runs (local processes and Ray drivers): take open units by lease, in the
    runner's groups, and hand them to the runner; wait while the rest is leased by live workers (taking over leases
    that go stale); end when nothing is left for this worker. A heartbeat keeps the leases fresh; every lease of
    this worker is released at the end, also on an exception. -> how many times it waited for other workers."""
    pending = Pending(units, store, _now(precise=True))
    waits = 0
    with Heartbeat(store.path, worker, every=min(ttl / 8, 15.0)):
        try:
            while True:
                open_units, started, slots = None, False, runner.slots()
                if slots > 0:
                    open_units = pending.open()
                    for group in runner.groups(open_units):
                        if slots == 0:
                            break
                        mine = [u for u in group if store.claim(u.key, worker, ttl)]
                        if mine:
                            pending.tried.update(u.key for u in mine)
                            done = store.done_keys([k for u in mine for k in u.keys])
                            runner.start([(u, pending.missing(u, done)) for u in mine])
                            slots, started = slots - 1, True
                if runner.busy():
                    runner.wait()
                    continue
                if started:
                    continue
                if not (pending.open() if open_units is None else open_units):
                    break
                waits += 1  # all held by live workers: wait for them (or for their leases to go stale)
                time.sleep(poll)
        finally:
            store.release_all(worker)
    return waits


class Runner:
    """What runs the units ``lease_loop`` claims: ``slots()`` groups it can start now; ``groups(open units)``:
    candidate groups, preferred first (each group's claimed units start together); ``start([(unit, missing jobs)])``
    runs them (to the end, or submits them and releases their leases when they finish); ``busy()``: something
    submitted is unfinished; ``wait()``: handle what finished (up to the poll interval)."""

    def slots(self) -> int:
        return 1

    def groups(self, open_units: List[Unit]) -> List[List[Unit]]:
        return [[u] for u in open_units]

    def start(self, parts: List) -> None:
        raise NotImplementedError

    def busy(self) -> bool:
        return False

    def wait(self) -> None:
        pass


class LocalRunner(Runner):
    """One unit at a time in this process, the loaded checkpoint's units first, the next checkpoint prefetched."""

    def __init__(self, checkpoints: Dict[str, Checkpoint], store: SweepDB, worker: str,
                 sink: Callable[[Dict], None], prefetch: bool = True, share: Optional[CoreShare] = None):
        self.checkpoints, self.store, self.worker, self.sink, self.share = checkpoints, store, worker, sink, share
        self.current: Optional[str] = None
        self.loaded: object = None  # Loaded, or the exception its load raised
        self.cand: List[Unit] = []
        self.units = 0
        self.pre = Prefetcher(Loaded, enabled=prefetch)

    def groups(self, open_units: List[Unit]) -> List[List[Unit]]:
        self.cand = sorted(open_units, key=lambda u: u.checkpoint != self.current)  # stable: loaded one first
        return [[u] for u in self.cand]

    def start(self, parts: List) -> None:
        (unit, jobs), = parts
        try:
            with _sharing(self.share):  # sized workers: the busy ones share the cores of those waiting or gone
                if unit.checkpoint != self.current:
                    self.loaded = None  # free the previous model before loading the next
                    self.loaded = self.pre.take(unit.checkpoint) or _load(self.checkpoints[unit.checkpoint])
                    self.current = unit.checkpoint
                    nxt = next((u.checkpoint for u in self.cand if u.checkpoint != self.current), None)
                    if nxt is not None and not isinstance(self.loaded, Exception):
                        self.pre.start(self.checkpoints[nxt])
                if isinstance(self.loaded, Exception):
                    for j in jobs:
                        self.sink(_error(j, self.loaded))
                else:
                    stored = self.store.rankings([unit.key])
                    for item in run_unit(self.loaded, unit, jobs, stored):
                        self.sink(item)
                self.units += 1
        finally:
            self.store.release(unit.key, self.worker)


def run_worker(units: Sequence[Unit], checkpoints: Dict[str, Checkpoint], db: str, sink: Callable[[Dict], None],
               log: Callable[[str], None] = print, worker: Optional[str] = None, ttl: float = LEASE_TTL,
               poll: float = POLL_S, prefetch: bool = True, share: Optional[CoreShare] = None) -> Dict[str, int]:
    """Run units from ``db`` in this process until none is left for this worker; ``sink`` writes each item.
    -> counts. ``share``: the core share of sized workers (marked busy while a unit runs, rebalanced between its
    forwards)."""
    worker = worker or worker_id()
    with SweepDB(db) as store:
        runner = LocalRunner(checkpoints, store, worker, sink, prefetch, share)
        try:
            waits = lease_loop(units, store, runner, worker, ttl, poll)
        finally:
            runner.pre.close()
    return {"units": runner.units, "waits": waits, "prefetched": runner.pre.started,
            "prefetch_skipped": runner.pre.skipped}


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
