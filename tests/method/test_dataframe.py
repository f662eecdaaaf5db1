"""CriticalResult.to_dataframe: pandas tables of the set, the ranking head and the curve; pandas stays optional."""
from __future__ import annotations

import sys

import pytest

from achilles_fast.method.result import CriticalNeuron, CriticalResult


def _result():
    n = [CriticalNeuron("model.layers.3.mlp.down_proj:7", "model.layers.3.mlp.down_proj", 7, 3, "mlp.down_proj", 0,
                        2.5),
         CriticalNeuron("lm_head_like:1", "lm_head_like", 1, None, "other", 1, 0.5)]
    return CriticalResult(model="m", neurons=n, converged=True, epsilon=1.0, clean_nll=2.0, final_nll=5.0,
                          log10_ratio=1.3, curve=[[1, 0.2], [2, 1.3]], params={"k": 4}, timings={}, stats={},
                          versions={}, top_ranked=n + n[:1], source={"repo_id": "org/m", "commit": "a" * 40})


def test_to_dataframe_tables():
    pd = pytest.importorskip("pandas")
    res = _result()
    df = res.to_dataframe()
    assert list(df.columns) == ["name", "module", "channel", "layer", "kind", "rank", "score"]
    assert df["name"].tolist() == res.names and df["score"].tolist() == [2.5, 0.5]
    assert df["layer"].tolist()[0] == 3 and pd.isna(df["layer"].tolist()[1])  # nullable: None outside the layers
    assert df.attrs["source"]["commit"] == "a" * 40 and df.attrs["log10_ratio"] == 1.3 and df.attrs["converged"]
    assert len(res.to_dataframe("top_ranked")) == 3
    curve = res.to_dataframe("curve")
    assert curve.to_dict("list") == {"n": [1, 2], "log10_ratio": [0.2, 1.3]}
    df.attrs["source"]["commit"] = "changed"  # a copy: the result is untouched
    assert res.source["commit"] == "a" * 40
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        res.to_dataframe("nope")
    empty = CriticalResult.from_dict({**res.to_dict(), "neurons": []}).to_dataframe()
    assert len(empty) == 0 and "name" in empty.columns


def test_to_dataframe_without_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas: pip install pandas"):
        _result().to_dataframe()
