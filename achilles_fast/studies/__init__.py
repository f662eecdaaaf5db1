"""Studies built on the method: ``baselines`` (rankers), ``robustness``, ``plots``, ``report``, ``sweep``."""
