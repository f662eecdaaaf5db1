"""Ray backend of the sweep: one streaming-generator task per checkpoint, rows written by the driver.

The driver is a sweep worker (``worker.lease_loop`` with a ``RayRunner``): it leases the units it submits, so several drivers, or a driver and
local workers, split one database. Each task runs ``jobs.run_checkpoint`` over its units (with the stored rankings
they may reuse) and yields rows one by one; the driver writes each as it arrives, so a worker killed mid-task
loses only the job it was running. A crashed task is resubmitted with the jobs still missing from the database (up
to ``retries`` times). At most as many tasks run as the cluster has room for (CPUs / num_cpus), so other drivers
find units left to lease; each task sizes torch's intra-op threads to its num_cpus.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Sequence

from ...threads import set_threads
from .db import LEASE_TTL
from .jobs import _error, run_checkpoint, unit_dict
from .plan import Unit
from .spec import Checkpoint
from .worker import POLL_S, Runner, lease_loop, worker_id


def _task(ck, units, stored, threads):
    set_threads(threads)  # the cores this task owns (Ray also sets OMP_NUM_THREADS for new worker processes)
    yield from run_checkpoint(ck, units, stored)


def _connect(address: str, num_cpus: float) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs the 'ray' package: pip install 'ray'") from None
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def _capacity(num_cpus: float, num_gpus: float, n_checkpoints: int) -> int:
    import ray
    res = ray.cluster_resources()
    cap = n_checkpoints
    if num_cpus > 0:
        cap = min(cap, int(res.get("CPU", 1) // num_cpus))
    if num_gpus > 0:
        cap = min(cap, int(res.get("GPU", 0) // num_gpus))
    return max(1, cap)


class RayRunner(Runner):
    """The claimed units of one checkpoint as one streaming Ray task (at most ``capacity`` at a time, one per
    checkpoint); rows are written as they arrive; a crashed task is resubmitted with the jobs still missing."""

    def __init__(self, ray, remote, checkpoints: Dict[str, Checkpoint], store, worker: str, sink, capacity: int,
                 threads: int, retries: int, log: Callable[[str], None], poll: float):
        self.ray, self.remote, self.checkpoints, self.store, self.worker = ray, remote, checkpoints, store, worker
        self.sink, self.capacity, self.threads, self.retries, self.log, self.poll = \
            sink, capacity, threads, retries, log, poll
        self.active: Dict = {}  # generator -> (checkpoint name, [(unit, jobs)], attempt)
        self.n_retries = 0

    def slots(self) -> int:
        return self.capacity - len(self.active)

    def groups(self, open_units: List[Unit]) -> List[List[Unit]]:
        running = {v[0] for v in self.active.values()}
        return [[u for u in open_units if u.checkpoint == name] for name in self.checkpoints if name not in running]

    def start(self, parts: List, attempt: int = 0) -> None:
        name = parts[0][0].checkpoint
        stored = self.store.rankings([u.key for u, _ in parts])
        args = [unit_dict(u, jobs) for u, jobs in parts]
        gen = self.remote.remote(dataclasses.asdict(self.checkpoints[name]), args, stored, self.threads)
        self.active[gen] = (name, parts, attempt)

    def busy(self) -> bool:
        return bool(self.active)

    def _release(self, parts) -> None:
        for u, _ in parts:
            self.store.release(u.key, self.worker)

    def wait(self) -> None:
        ready, _ = self.ray.wait(list(self.active), num_returns=1, timeout=self.poll)
        for gen in ready:
            name, parts, attempt = self.active[gen]
            try:
                ref = next(gen)
                self.sink(self.ray.get(ref))
                continue
            except StopIteration:
                del self.active[gen]
                self._release(parts)
                continue
            except Exception as e:  # worker died (kill -9, OOM, node loss) or task error
                del self.active[gen]
                done = self.store.done_keys([j.key for _, jobs in parts for j in jobs])
                missing = [(u, [j for j in jobs if j.key not in done]) for u, jobs in parts]
                missing = [(u, jobs) for u, jobs in missing if jobs]
                n_missing = sum(len(jobs) for _, jobs in missing)
                self.log(f"task for {name} failed ({type(e).__name__}); {n_missing} job(s) left")
                if missing and attempt < self.retries:
                    self.n_retries += 1
                    self.start(missing, attempt + 1)
                    continue
                for _, jobs in missing:
                    for j in jobs:
                        err = RuntimeError(f"Ray task failed {attempt + 1} time(s): {type(e).__name__}: {e}")
                        self.sink(dict(_error(j, err), traceback=None))
                self._release(parts)


def run_on_ray(units: Sequence[Unit], checkpoints: Dict[str, Checkpoint], sink: Callable[[Dict], None], store,
               address: str, num_gpus: float = 0.0, num_cpus: float = 1.0, retries: int = 2,
               log: Callable[[str], None] = print, ttl: float = LEASE_TTL, poll: float = POLL_S) -> int:
    """Run the units as Ray tasks (one per checkpoint at a time); returns how many tasks were resubmitted."""
    _connect(address, num_cpus)
    import ray

    threads = max(1, int(round(num_cpus)) if num_cpus else 1)
    remote = ray.remote(_task).options(num_returns="streaming", num_gpus=num_gpus, num_cpus=num_cpus,
                                       max_retries=0)
    capacity = _capacity(num_cpus, num_gpus, len(checkpoints))
    worker = worker_id()
    runner = RayRunner(ray, remote, checkpoints, store, worker, sink, capacity, threads, retries, log, poll)
    lease_loop(units, store, runner, worker, ttl, poll)
    return runner.n_retries
