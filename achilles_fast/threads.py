"""CPU threads sized to the cores a worker owns, and a warning when the machine's load leaves them without cores.

Workers that share cores collapse: torch's OpenMP threads wait for each other at barriers, and a thread without a
core of its own makes every parallel op wait for it (elementwise ops ~1000x slower under a busy neighbour). So
each worker of N gets ``cores // N`` intra-op threads: the OpenMP/MKL variables are set in the worker's
environment before torch starts its pools (``thread_env``), and ``torch.set_num_threads`` in the worker itself
(``set_threads``). When a sweep's units run out, the workers still busy take over the idle ones' cores
(``CoreShare``): the tail of a sweep does not run on one core while the other waits.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

from .utils import pid_alive, positive_int

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SHARE_VAR = "ACHILLES_FAST_CORE_SHARE"  # the folder where the sized workers of one sweep mark themselves busy


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_threads(workers: int, threads: Optional[int] = None) -> int:
    """Intra-op threads for each of ``workers`` workers sharing this machine: ``threads``, else cores // workers."""
    positive_int(workers, "workers")
    if threads is not None:
        return positive_int(threads, "threads")
    return max(1, cores() // workers)


def thread_env(threads: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) with the OpenMP/MKL/OpenBLAS thread counts set: the
    environment of a worker process, read by those runtimes when they start (before torch's first parallel op)."""
    env = dict(os.environ if base is None else base)
    env.update({v: str(int(threads)) for v in THREAD_VARS})
    return env


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in this process from now on (torch + the variables for child processes).

    torch applies it to the calling thread's OpenMP pool at once and to threads that start torch work later."""
    import torch
    os.environ.update({v: str(int(threads)) for v in THREAD_VARS})
    torch.set_num_threads(int(threads))


SAMPLE_S = 0.2  # seconds over which the CPU time of other processes is measured


def _cpu_ticks():
    """(busy ticks of all CPUs, total ticks of all CPUs, this process's ticks) from /proc (None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8]), int(own[11]) + int(own[12])  # utime + stime of this process


def _n_cpus() -> int:
    return max(1, os.cpu_count() or 1)


def busy_cores(window: float = SAMPLE_S) -> Optional[float]:
    """Cores kept busy by other processes right now: their CPU time over ``window`` seconds (this process's own
    excluded); None where /proc is not available."""
    a = _cpu_ticks()
    if a is None:
        return None
    time.sleep(window)
    b = _cpu_ticks()
    if b is None or b[1] <= a[1]:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[2] - a[2])) / (b[1] - a[1]) * _n_cpus())


def load_warning(threads: int, load: Optional[float] = None, n_cores: Optional[int] = None,
                 hint: str = "OMP_NUM_THREADS") -> Optional[str]:
    """One line when other processes (``load``: cores they keep busy, measured now by ``busy_cores``) leave fewer
    cores free than this run's ``threads``; None otherwise or where it cannot be measured. ``hint``: how this
    command sets its thread count."""
    if load is None:
        load = busy_cores()
        if load is None:
            return None
    n_cores = cores() if n_cores is None else n_cores
    free = n_cores - load
    if free >= threads - 0.5:
        return None
    return (f"warning: other processes keep {load:.1f} of {n_cores} core(s) busy right now, leaving the {threads} "
            f"torch thread(s) of this run without a core each: expect much slower forwards (threads wait for "
            f"cores); use fewer threads ({hint}) or a quieter machine")


def cpu_load_warning(threads: Optional[int] = None) -> Optional[str]:
    """Print ``load_warning`` for this process's torch threads to stderr (once per call); returns the line.
    torch sizes its threads from OMP_NUM_THREADS, so that is the hint."""
    import sys

    import torch
    line = load_warning(torch.get_num_threads() if threads is None else threads)
    if line:
        print(line, file=sys.stderr, flush=True)
    return line


class CoreShare:
    """The cores of one machine split among the sweep workers that are busy (``sweep --workers N``, sized).

    A worker running a unit marks itself busy (a file named by its pid in ``folder``, made by the parent); between
    forwards (the sweep worker passes ``rebalance`` to the method as its between-forwards callback), ``rebalance``
    gives it ``cores // busy`` threads. When the units run out, the workers still running
    take over the idle workers' cores (a 4-unit sweep on 2 workers no longer ends on one core). Markers of dead
    processes (kill -9) do not count.
    """

    CHECK_S = 0.5  # seconds between two looks at the folder (a listing of a few files: ~20 us)

    def __init__(self, folder: str, n_cores: Optional[int] = None):
        self.folder = Path(folder)
        self.cores = cores() if n_cores is None else n_cores
        self.marker = self.folder / str(os.getpid())
        self._next = 0.0

    def busy_workers(self) -> int:
        """Workers marked busy whose process is alive (at least 1: this one asks)."""
        pids = [int(p.name) for p in self.folder.iterdir() if p.name.isdigit()] if self.folder.is_dir() else []
        return max(1, sum(1 for pid in pids if pid_alive(pid)))

    def threads(self) -> int:
        return max(1, self.cores // self.busy_workers())

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark this worker busy for the block (its threads sized to the busy workers at once)."""
        self.marker.touch()
        try:
            self.rebalance(force=True)
            yield
        finally:
            self.marker.unlink(missing_ok=True)

    def rebalance(self, force: bool = False) -> None:
        """Resize this process's torch threads to ``threads()`` (at most every ``CHECK_S`` seconds)."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.CHECK_S
        import torch
        want = self.threads()
        if torch.get_num_threads() != want:
            set_threads(want)
