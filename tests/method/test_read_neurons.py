"""read_neurons: the library's reader of neuron sets (result JSON files, JSON lists, comma-separated names)."""
from __future__ import annotations

import json

import pytest

import achilles_fast
from achilles_fast.method.result import CriticalNeuron, CriticalResult, read_neurons

A, B = "model.layers.0.mlp.down_proj:5", "model.layers.1.mlp.down_proj:7"


def _result() -> CriticalResult:
    neurons = [CriticalNeuron(name=n, module=n.split(":")[0], channel=int(n.split(":")[1]), layer=i, kind="mlp",
                              rank=i, score=1.0 - i) for i, n in enumerate([A, B])]
    return CriticalResult(model="m", neurons=neurons, converged=True, epsilon=0.5, clean_nll=1.0, final_nll=2.0,
                          log10_ratio=0.5, curve=[[1, 0.1], [2, 0.5]], params={"k": 3, "epsilon": 0.5}, timings={},
                          stats={}, versions={})


def test_reexported():
    assert achilles_fast.read_neurons is read_neurons and "read_neurons" in achilles_fast.__all__


def test_names_and_params_from_a_saved_result(tmp_path):
    res = _result()
    text = res.to_json(str(tmp_path / "r.json"))
    assert (tmp_path / "r.json").read_text() == text + "\n" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    names, params = read_neurons(str(tmp_path / "r.json"))
    assert names == [A, B] and params == res.params == {"k": 3, "epsilon": 0.5}


def test_json_list_and_comma_separated(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([A, {"name": B}]))
    assert read_neurons(str(tmp_path / "l.json")) == ([A, B], {})
    assert read_neurons(f" {A}, {B} ,") == ([A, B], {})


@pytest.mark.parametrize("content, match", [
    ("{not json", "not a JSON file"),
    ('{"x": 1}', "no 'neurons' key"),
    ('{"neurons": 3}', "must be a JSON list"),
    ('[1, 2]', "each neuron must be a name"),
])
def test_bad_files_one_line(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        read_neurons(str(tmp_path / "bad.json"))
    assert str(e.value).startswith("--neurons ") and "\n" not in str(e.value)


def test_folder_missing_file_empty(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        read_neurons(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_neurons(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="^neurons is empty$"):
        read_neurons(" , ", what="neurons")
