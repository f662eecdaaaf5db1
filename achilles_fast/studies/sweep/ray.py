"""Ray backend of the sweep: one streaming-generator task per checkpoint, rows written by the driver.

Each task runs ``jobs.run_checkpoint`` and yields its rows one by one; the driver writes each row as it
arrives, so a worker killed mid-task loses only the job it was running. A crashed task is resubmitted with the
jobs still missing from the database (up to ``retries`` times).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Tuple

from .jobs import run_checkpoint


def _task(ck, jobs):
    yield from run_checkpoint(ck, jobs)


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


def run_on_ray(groups: List[Tuple[Dict, List[Dict]]], sink: Callable[[Dict], None], store, address: str,
               num_gpus: float = 0.0, num_cpus: float = 1.0, retries: int = 2,
               log: Callable[[str], None] = print) -> int:
    """Run the checkpoint groups as Ray tasks; returns how many tasks were resubmitted after a crash."""
    _connect(address, num_cpus)
    import ray

    remote = ray.remote(_task).options(num_returns="streaming", num_gpus=num_gpus, num_cpus=num_cpus,
                                       max_retries=0)
    active: Dict = {}  # generator -> (ck, jobs, attempt)

    def submit(ck, jobs, attempt):
        active[remote.remote(ck, jobs)] = (ck, jobs, attempt)

    for ck, jobs in groups:
        submit(ck, jobs, 0)
    n_retries = 0
    while active:
        ready, _ = ray.wait(list(active), num_returns=1, timeout=5.0)
        for gen in ready:
            ck, jobs, attempt = active[gen]
            try:
                ref = next(gen)
                sink(ray.get(ref))
                continue
            except StopIteration:
                del active[gen]
                continue
            except Exception as e:  # worker died (kill -9, OOM, node loss) or task error
                del active[gen]
                keys = [j["key"] for j in jobs]
                done = store.done_keys(keys)
                missing = [j for j, k in zip(jobs, keys) if k not in done]
                log(f"task for {ck['name']} failed ({type(e).__name__}); {len(missing)} job(s) left")
                if not missing:
                    continue
                if attempt < retries:
                    n_retries += 1
                    submit(ck, missing, attempt + 1)
                else:
                    for j in missing:
                        sink({"error": f"Ray task failed {attempt + 1} time(s): {type(e).__name__}: {e}",
                              "key": j["key"], "checkpoint": j["checkpoint"], "text": j["text"],
                              "params": j["params"]})
    return n_retries
