"""Checkout entry point for `achilles_fast.bench.paper_baseline` (installed: `achilles-fast bench baseline`); see that module."""
from achilles_fast.bench.paper_baseline import *  # noqa: F401,F403  (re-exported for scripts and tests)
from achilles_fast.bench.paper_baseline import main

if __name__ == "__main__":
    main()
