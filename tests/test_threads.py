"""Threads sized to cores: per-worker counts, the environment of worker processes, the load warning."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from achilles_fast import threads


def test_worker_threads():
    n = threads.cores()
    assert threads.worker_threads(1) == n and threads.worker_threads(2) == max(1, n // 2)
    assert threads.worker_threads(10 * n) == 1 and threads.worker_threads(2, 3) == 3
    for bad in (dict(workers=0), dict(workers=2, threads=0)):
        with pytest.raises(ValueError):
            threads.worker_threads(**bad)


def test_thread_env_reaches_a_fresh_process():
    env = threads.thread_env(1, base={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert all(env[v] == "1" for v in threads.THREAD_VARS)
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1", out.stderr


def test_set_threads():
    before = torch.get_num_threads()
    try:
        threads.set_threads(1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_load_warning():
    assert threads.load_warning(2, load=0.2, n_cores=2) is None
    assert threads.load_warning(1, load=1.0, n_cores=2) is None
    w = threads.load_warning(2, load=1.3, n_cores=2)
    assert w and "\n" not in w and "1.3 of 2 core(s) busy" in w and "2 torch thread(s)" in w
    assert threads.load_warning(4, load=0.0, n_cores=2)  # more threads than cores


@pytest.fixture
def torch_threads():
    before, env = torch.get_num_threads(), {v: os.environ.get(v) for v in threads.THREAD_VARS}
    yield
    torch.set_num_threads(before)
    for v, x in env.items():
        os.environ.pop(v, None) if x is None else os.environ.__setitem__(v, x)


def test_core_share_splits_cores_among_busy_workers(tmp_path, torch_threads):
    share = threads.CoreShare(str(tmp_path), n_cores=4)
    assert share.busy_workers() == 1 and share.threads() == 4  # nobody busy: this worker asks
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        (tmp_path / str(sibling.pid)).touch()  # a live sibling, busy
        (tmp_path / str(gone.pid)).touch()  # a dead one (kill -9 leaves its marker): not counted
        with share.busy():
            assert share.marker.exists() and share.busy_workers() == 2
            assert torch.get_num_threads() == 2  # resized on entry
            (tmp_path / str(sibling.pid)).unlink()  # the sibling ran out of units
            share.rebalance()  # within CHECK_S of the last look: unchanged
            assert torch.get_num_threads() == 2
            share._next = 0.0
            share.rebalance()
            assert torch.get_num_threads() == 4 and os.environ["OMP_NUM_THREADS"] == "4"
        assert not share.marker.exists()
        with pytest.raises(RuntimeError):
            with share.busy():
                raise RuntimeError("a unit that failed")
        assert not share.marker.exists()  # unmarked even when the unit raised
    finally:
        sibling.kill()
        sibling.wait()


def test_contention_is_measured_now_not_the_one_minute_average(monkeypatch):
    """Issue 20.7: just after a build the 1-minute load average is high on an idle machine: no warning then; the
    busy time of other processes over a short window is what counts, this process's own excluded."""
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    samples = iter([(1000, 10000, 50), (1000, 10200, 50)])  # (busy ticks, total ticks, own ticks): all idle now
    monkeypatch.setattr(threads, "_cpu_ticks", lambda: next(samples))
    monkeypatch.setattr(threads, "_n_cpus", lambda: 2)
    assert threads.load_warning(2, n_cores=2) is None
    # other processes busy on 1.5 of 2 cores, while this process itself spun one core: counted without it
    samples = iter([(1000, 10000, 50), (1000 + 150 + 100, 10200, 50 + 100)])
    monkeypatch.setattr(threads, "_cpu_ticks", lambda: next(samples))
    w = threads.load_warning(2, n_cores=2)
    assert w and "1.5 of 2 core(s) busy" in w and "\n" not in w


def test_sweep_warning_does_not_suggest_omp_num_threads():
    w = threads.load_warning(2, load=1.3, n_cores=2, hint="--threads")
    assert "OMP_NUM_THREADS" not in w and "--threads" in w
