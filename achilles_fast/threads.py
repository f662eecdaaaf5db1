"""CPU threads sized to the cores a worker owns, and a warning when the machine's load leaves them without cores.

Workers that share cores collapse: torch's OpenMP threads wait for each other at barriers, and a thread without a
core of its own makes every parallel op wait for it (elementwise ops ~1000x slower under a busy neighbour). So
each worker of N gets ``cores // N`` intra-op threads: the OpenMP/MKL variables are set in the worker's
environment before torch starts its pools (``thread_env``), and ``torch.set_num_threads`` in the worker itself
(``set_threads``).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_threads(workers: int, threads: Optional[int] = None) -> int:
    """Intra-op threads for each of ``workers`` workers sharing this machine: ``threads``, else cores // workers."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        return int(threads)
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


def load_warning(threads: int, load: Optional[float] = None, n_cores: Optional[int] = None) -> Optional[str]:
    """One line when the machine's load (1-minute average, without this run) leaves fewer cores free than this
    run's ``threads``; None otherwise or where the load is unknown."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    n_cores = cores() if n_cores is None else n_cores
    free = n_cores - load
    if free >= threads - 0.5:
        return None
    return (f"warning: load average {load:.1f} on {n_cores} core(s) leaves the {threads} torch thread(s) of this run "
            f"without a core each: expect much slower forwards (threads wait for cores); use fewer threads "
            f"(--threads, OMP_NUM_THREADS) or a quieter machine")


def cpu_load_warning(threads: Optional[int] = None) -> Optional[str]:
    """Print ``load_warning`` for this process's torch threads to stderr (once per call); returns the line."""
    import sys

    import torch
    line = load_warning(torch.get_num_threads() if threads is None else threads)
    if line:
        print(line, file=sys.stderr, flush=True)
    return line
