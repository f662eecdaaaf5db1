"""The one lease loop (studies/sweep/worker.lease_loop) that local workers and the Ray driver run, with fake runners:
groups claimed together, slots respected, a unit held by a live worker waited for and taken over once its lease goes
stale, every lease released at the end (also on an exception)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from achilles_fast.studies.sweep.db import SweepDB
from achilles_fast.studies.sweep.plan import Unit
from achilles_fast.studies.sweep.worker import Runner, lease_loop


def _units():
    return [Unit(f"u{c}{i}", c, [SimpleNamespace(key=f"j{c}{i}")]) for c in "ab" for i in range(2)]


class Recorder(Runner):
    """Starts groups of one checkpoint at a time, ``slots`` at once, finishing each on the next wait()."""

    def __init__(self, store, worker, slots=1, per_checkpoint=False, fail_after=None):
        self.store, self.worker, self.n_slots, self.per_checkpoint = store, worker, slots, per_checkpoint
        self.started, self.running, self.fail_after = [], [], fail_after
        self.leased_while_running = []

    def slots(self):
        return self.n_slots - len(self.running)

    def groups(self, open_units):
        if not self.per_checkpoint:
            return super().groups(open_units)
        return [[u for u in open_units if u.checkpoint == c] for c in dict.fromkeys(u.checkpoint for u in open_units)]

    def start(self, parts):
        if self.fail_after is not None and len(self.started) == self.fail_after:
            raise KeyboardInterrupt
        self.started.append([(u.key, [j.key for j in jobs]) for u, jobs in parts])
        self.running.append(parts)
        self.leased_while_running.append(sorted(x["unit"] for x in self.store.leases()))

    def busy(self):
        return bool(self.running)

    def wait(self):
        for u, _ in self.running.pop(0):
            self.store.release(u.key, self.worker)


def test_each_unit_started_once_in_groups_and_leases_released(tmp_path):
    db = str(tmp_path / "s.db")
    with SweepDB(db) as store:
        r = Recorder(store, "w1", slots=2, per_checkpoint=True)
        waits = lease_loop(_units(), store, r, "w1", ttl=5.0, poll=0.01)
        assert waits == 0
        assert r.started == [[("ua0", ["ja0"]), ("ua1", ["ja1"])], [("ub0", ["jb0"]), ("ub1", ["jb1"])]]
        assert r.leased_while_running[1] == ["ua0", "ua1", "ub0", "ub1"]  # two slots: both groups at once
        assert store.leases() == []


def test_a_unit_held_by_a_live_worker_is_waited_for_then_taken_over(tmp_path):
    db = str(tmp_path / "s.db")
    with SweepDB(db) as store:
        assert store.claim("ub1", "other", ttl=60.0)
        r = Recorder(store, "w1")
        waits = lease_loop(_units(), store, r, "w1", ttl=0.3, poll=0.05)  # "other" never beats: stale after 0.3 s
        assert [g[0][0] for g in r.started] == ["ua0", "ua1", "ub0", "ub1"] and waits >= 1
        assert store.leases() == []


def test_leases_released_when_the_runner_raises(tmp_path):
    db = str(tmp_path / "s.db")
    with SweepDB(db) as store:
        r = Recorder(store, "w1", slots=3, fail_after=2)
        with pytest.raises(KeyboardInterrupt):
            lease_loop(_units(), store, r, "w1", ttl=5.0, poll=0.01)
        assert len(r.started) == 2 and store.leases() == []


def _open_at_barrier(path, barrier, errors):
    barrier.wait()
    try:
        SweepDB(path).close()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_new_database_at_once_all_get_it(tmp_path):
    """Workers started together race to create the file and switch it to WAL; SQLite answers one of two racing
    switches 'database is locked' at once (no busy wait): SweepDB retries it (CI saw a sweep exit 2 on it)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for i in range(20):  # without the retry, 16 of 60 racing pairs failed here
        path = str(tmp_path / f"r{i}.db")
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_open_at_barrier, args=(path, barrier, errors)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert errors.empty(), errors.get()
        with SweepDB(path, readonly=True) as s:
            assert s.version > 0
