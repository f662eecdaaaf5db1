"""Ray backend of the sweep: one streaming-generator task per checkpoint, rows written by the driver.

The driver is a sweep worker (see ``worker``): it leases the units it submits, so several drivers, or a driver and
local workers, split one database. Each task runs ``jobs.run_checkpoint`` over its units (with the stored rankings
they may reuse) and yields rows one by one; the driver writes each as it arrives, so a worker killed mid-task
loses only the job it was running. A crashed task is resubmitted with the jobs still missing from the database (up
to ``retries`` times). At most as many tasks run as the cluster has room for (CPUs / num_cpus), so other drivers
find units left to lease; each task sizes torch's intra-op threads to its num_cpus.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Dict, List, Sequence

from ...threads import set_threads
from .db import LEASE_TTL
from .jobs import _error, run_checkpoint, unit_dict
from .plan import Unit
from .spec import Checkpoint, _now
from .worker import POLL_S, Heartbeat, Pending, worker_id


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
    pending = Pending(units, store, _now(precise=True))
    active: Dict = {}  # generator -> (checkpoint name, [(unit, jobs)], attempt)

    def submit(name: str, parts: List, attempt: int) -> None:
        stored = store.rankings([u.key for u, _ in parts])
        args = [unit_dict(u, jobs) for u, jobs in parts]
        active[remote.remote(dataclasses.asdict(checkpoints[name]), args, stored, threads)] = (name, parts, attempt)

    def release(parts) -> None:
        for u, _ in parts:
            store.release(u.key, worker)

    n_retries = 0
    with Heartbeat(store.path, worker, every=min(ttl / 8, 15.0)):
        try:
            while True:
                if len(active) < capacity:
                    busy = {v[0] for v in active.values()}
                    open_units = pending.open()
                    for name in checkpoints:
                        if len(active) >= capacity:
                            break
                        if name in busy:
                            continue
                        mine = [u for u in open_units if u.checkpoint == name and store.claim(u.key, worker, ttl)]
                        if mine:
                            done = store.done_keys([k for u in mine for k in u.keys])
                            pending.tried.update(u.key for u in mine)
                            submit(name, [(u, pending.missing(u, done)) for u in mine], 0)
                if not active:
                    if not pending.open():
                        break
                    time.sleep(poll)  # the rest is leased by other workers: wait for them
                    continue
                ready, _ = ray.wait(list(active), num_returns=1, timeout=poll)
                for gen in ready:
                    name, parts, attempt = active[gen]
                    try:
                        ref = next(gen)
                        sink(ray.get(ref))
                        continue
                    except StopIteration:
                        del active[gen]
                        release(parts)
                        continue
                    except Exception as e:  # worker died (kill -9, OOM, node loss) or task error
                        del active[gen]
                        done = store.done_keys([j.key for _, jobs in parts for j in jobs])
                        missing = [(u, [j for j in jobs if j.key not in done]) for u, jobs in parts]
                        missing = [(u, jobs) for u, jobs in missing if jobs]
                        n_missing = sum(len(jobs) for _, jobs in missing)
                        log(f"task for {name} failed ({type(e).__name__}); {n_missing} job(s) left")
                        if missing and attempt < retries:
                            n_retries += 1
                            submit(name, missing, attempt + 1)
                            continue
                        for _, jobs in missing:
                            for j in jobs:
                                err = RuntimeError(f"Ray task failed {attempt + 1} time(s): {type(e).__name__}: {e}")
                                sink(dict(_error(j, err), traceback=None))
                        release(parts)
        finally:
            store.release_all(worker)
    return n_retries
