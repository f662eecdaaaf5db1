"""Stage 2 search on synthetic curves: linear and bisect agree on monotone curves; max_neurons."""
from __future__ import annotations

import math

import pytest

from achilles_fast.method.stage2 import greedy_search


@pytest.mark.parametrize("crossing", [1, 2, 37, 64, 65, 999])
@pytest.mark.parametrize("step", [1, 3])
def test_linear_and_bisect_agree_on_monotone_curves(crossing, step):
    fn = lambda n: 1.0 + 3.0 * math.log(10) * (n >= crossing) + 1e-4 * n  # noqa: E731
    out = {}
    for strategy in ("linear", "bisect"):
        out[strategy] = greedy_search(lambda ns: [fn(n) for n in ns], 1.0, 1000, epsilon=1.0, step=step,
                                      max_neurons=1000, strategy=strategy, batch_size=8)
    lin, bis = out["linear"], out["bisect"]
    expect = min(((crossing + step - 1) // step) * step, 1000)
    assert lin.converged and bis.converged
    assert lin.n == bis.n == expect
    assert bis.verified
    assert all(n % step == 0 or n == 1000 for n in lin.curve)
    if crossing > 100:
        assert bis.batches < lin.batches


def test_not_converged_respects_max_neurons():
    out = greedy_search(lambda ns: [1.0 + 0.001 * n for n in ns], 1.0, 100, epsilon=1.0, step=1, max_neurons=30,
                        strategy="linear", batch_size=4)
    assert not out.converged and out.n == 0 and max(out.curve) == 30
