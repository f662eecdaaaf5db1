"""Stage 2 search on synthetic curves: linear and bisect agree on monotone curves; first == linear on every curve;
max_neurons."""
from __future__ import annotations

import math

import pytest

from achilles_fast.method.stage2 import greedy_search


@pytest.mark.parametrize("crossing", [1, 2, 37, 64, 65, 999])
@pytest.mark.parametrize("step", [1, 3])
def test_linear_and_bisect_agree_on_monotone_curves(crossing, step):
    fn = lambda n: 1.0 + 3.0 * math.log(10) * (n >= crossing) + 1e-4 * n  # noqa: E731
    out = {}
    for strategy in ("linear", "bisect", "first"):
        out[strategy] = greedy_search(lambda ns: [fn(n) for n in ns], 1.0, 1000, epsilon=1.0, step=step,
                                      max_neurons=1000, strategy=strategy, batch_size=8)
    lin, bis = out["linear"], out["bisect"]
    expect = min(((crossing + step - 1) // step) * step, 1000)
    assert lin.converged and bis.converged
    assert lin.n == bis.n == out["first"].n == expect
    assert bis.verified
    assert all(n % step == 0 or n == 1000 for n in lin.curve)
    if crossing > 100:
        assert bis.batches < lin.batches


def test_not_converged_respects_max_neurons():
    out = greedy_search(lambda ns: [1.0 + 0.001 * n for n in ns], 1.0, 100, epsilon=1.0, step=1, max_neurons=30,
                        strategy="linear", batch_size=4)
    assert not out.converged and out.n == 0 and max(out.curve) == 30


def _random_curve(rng, max_n):
    """A non-monotone log10-ratio curve over n = 1..max_n: a noisy random walk with dips, spikes and plateaus."""
    kind = rng.random()
    ys, y = {}, 0.0
    for n in range(1, max_n + 1):
        y += rng.gauss(0.01, 0.08)
        if rng.random() < 0.03:
            y -= rng.random() * 0.5  # a dip
        ys[n] = y + (rng.random() * 2.0 if rng.random() < 0.02 else 0.0)  # an isolated spike
        if kind < 0.2:
            ys[n] = rng.uniform(-0.2, 1.05)  # white noise around epsilon
    return ys


def _first_crossing(ys, grid, eps):
    return next((n for n in grid if ys[n] >= eps), 0)


def test_first_equals_linear_on_random_non_monotone_curves():
    """Property test: 600 seeded random curves x random step / batch / max_neurons / epsilon; the default
    strategy returns the first crossing (computed directly from the curve), as linear does, at about its cost."""
    import random
    from achilles_fast.method.stage2 import _grid
    non_monotone = 0
    for seed in range(600):
        rng = random.Random(seed)
        n_ranked = rng.randint(1, 300)
        ys = _random_curve(rng, n_ranked)
        step, bsz = rng.choice([1, 1, 2, 3, 7]), rng.choice([1, 2, 3, 8, 16])
        max_neurons, eps = rng.randint(1, 320), rng.uniform(0.05, 1.5)
        nll = lambda ns: [1.0 + ys[n] * math.log(10) for n in ns]  # noqa: E731
        out = {s: greedy_search(nll, 1.0, n_ranked, epsilon=eps, step=step, max_neurons=max_neurons, strategy=s,
                                batch_size=bsz) for s in ("first", "linear", "bisect")}
        grid = _grid(min(max_neurons, n_ranked), step)
        expect = _first_crossing(ys, grid, eps)
        first, lin = out["first"], out["linear"]
        assert (first.n, first.converged) == (lin.n, lin.converged) == (expect, expect > 0), seed
        if first.converged:
            assert first.verified
            assert all(first.curve[n] < eps for n in grid if n < first.n), seed  # certified: all below evaluated
        probes = len(grid).bit_length() + 1
        assert first.evaluations <= lin.evaluations + probes + bsz, seed
        b = out["bisect"]
        if b.converged:  # bisect: a verified crossing, never before the first one
            assert b.n >= expect and b.curve[b.n] >= eps and b.verified, seed
        vals = [ys[n] for n in grid]
        non_monotone += any(a > c for a, c in zip(vals, vals[1:]))
    assert non_monotone > 500  # the property is exercised on non-monotone curves


def test_first_is_the_default_and_bisect_may_return_a_later_crossing():
    from achilles_fast.method.config import FindConfig
    assert FindConfig().strategy == "first"
    # crosses at 3, dips below from 4 to 20, crosses again from 21 on
    ys = {n: (2.0 if n == 3 or n > 20 else 0.0) for n in range(1, 101)}
    nll = lambda ns: [1.0 + ys[n] * math.log(10) for n in ns]  # noqa: E731
    got = {s: greedy_search(nll, 1.0, 100, epsilon=1.0, strategy=s, batch_size=1).n
           for s in ("first", "linear", "bisect")}
    assert got == {"first": 3, "linear": 3, "bisect": 21}
