"""Benchmarks shipped with the package (``achilles-fast bench kernels|e2e|baseline``; in a checkout also
``python benchmarks/bench_kernels.py`` etc.).

- ``kernels``: every ``achilles_fast::`` op vs the plain-PyTorch expression it replaces, at real model shapes.
- ``e2e``: find_critical end to end vs the paper-faithful baseline vs the Stage 1 arithmetic floor.
- ``paper_baseline``: the paper's procedure re-implemented sequentially, for comparison only.
"""
