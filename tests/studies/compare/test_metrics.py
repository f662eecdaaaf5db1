"""compare's metrics against independent recomputations on random data."""
import itertools
import random

import numpy as np
import pytest

from achilles_fast.studies.compare import metrics


def _rand_sets(rng, n=4, pool=30):
    return [set(rng.sample(range(pool), rng.randint(0, 10))) for _ in range(n)]


def test_jaccard_matches_definition():
    rng = random.Random(0)
    for _ in range(20):
        sets = [{f"m:{i}" for i in s} for s in _rand_sets(rng)]
        m = metrics.jaccard(sets)
        for (i, a), (j, b) in itertools.product(enumerate(sets), repeat=2):
            want = 1.0 if not (a | b) else len(a & b) / len(a | b)
            assert m[i][j] == pytest.approx(want)
        assert all(m[i][i] == 1.0 for i in range(len(sets)))
    assert metrics.jaccard([{"a"}, None])[0][1] is None


def _pearson(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.corrcoef(x, y)[0, 1])


def _ranks_by_counting(x):
    """Average ranks (1-based) by counting: rank = #smaller + (#equal + 1) / 2."""
    x = np.asarray(x)
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def test_average_ranks_and_spearman_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(30):
        a = rng.integers(0, 5, size=rng.integers(2, 12)).astype(float)  # many ties
        b = rng.normal(size=a.size)
        assert np.array_equal(metrics.average_ranks(a), _ranks_by_counting(a))
        rho = metrics.spearman_rho(a, b)
        ra, rb = _ranks_by_counting(a), _ranks_by_counting(b)
        want = None if ra.std() == 0 else _pearson(ra, rb)
        assert (rho is None and want is None) or rho == pytest.approx(want)


def test_spearman_over_top_k_union_with_missing_at_the_bottom():
    a = {"x:0": (0, 9.0), "x:1": (1, 8.0), "x:2": (2, 7.0)}
    b = {"x:1": (0, 5.0), "x:0": (1, 4.0), "x:3": (2, 3.0)}
    m = metrics.spearman([a, b], k=2)  # union of top-2: x:0, x:1 (+ nothing else)
    assert m[0][1] == pytest.approx(-1.0) and m[0][0] == pytest.approx(1.0)
    m3 = metrics.spearman([a, b], k=3)  # union x:0..x:3; x:3 missing in a (bottom), x:2 missing in b (bottom)
    names = ["x:0", "x:1", "x:2", "x:3"]
    sa, sb = [9, 8, 7, 6], [4, 5, 2, 3]
    assert m3[0][1] == pytest.approx(_pearson(_ranks_by_counting(sa), _ranks_by_counting(sb)))
    assert names  # order-independent


def test_persistence_and_series():
    names = ["c0", "c1", "c2"]
    sets = [["m:1", "m:2"], ["m:2", "m:3"], None]
    ranked = [{"m:1": (0, 3.0), "m:2": (1, 2.0)}, {"m:2": (0, 5.0), "m:3": (1, 4.0), "m:1": (7, 0.1)}, None]
    p = metrics.persistence(names, sets, ranked)
    assert [e["neuron"] for e in p] == ["m:2", "m:1", "m:3"]  # shared by two first, then best rank
    assert p[0]["critical_in"] == ["c0", "c1"] and p[1]["rank"] == {"c0": 0, "c1": 7, "c2": None}
    s = metrics.series(names, sets, [1.5, 0.2, None], ranked, k=2)
    assert s["n_critical"] == [2, 2, None] and s["first_set_log10_ratio"] == [1.5, 0.2, None]
    assert s["enters_top_k"] == {"m:1": "c0", "m:2": "c0", "m:3": "c1"}


def test_revision_order_is_numeric():
    specs = ["org/m@step1000", "org/m@step200", "org/m@step30"]
    assert sorted(specs, key=metrics.revision_key) == ["org/m@step30", "org/m@step200", "org/m@step1000"]
