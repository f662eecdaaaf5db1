"""Studies built on the method: ``baselines`` (rankers), ``robustness``, ``plots``, ``downstream``, ``generate``,
``study`` (the paper's claims on one model), ``sweep`` (grids over checkpoints, and their reports)."""
