"""Checkout entry point for `achilles_fast.bench.kernels` (installed: `achilles-fast bench kernels`); see that module."""
from achilles_fast.bench.kernels import *  # noqa: F401,F403  (re-exported for scripts and tests)
from achilles_fast.bench.kernels import main

if __name__ == "__main__":
    main()
