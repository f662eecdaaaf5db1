"""Checkout entry point for `achilles_fast.bench.e2e` (installed: `achilles-fast bench e2e`); see that module."""
from achilles_fast.bench.e2e import *  # noqa: F401,F403  (re-exported for scripts and tests)
from achilles_fast.bench.e2e import main

if __name__ == "__main__":
    main()
