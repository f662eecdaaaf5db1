"""Plots render headless and hold what they should (points, counts, bars); files are valid PNG / SVG."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import STORIES

from achilles_fast.studies import plots
from achilles_fast.method.result import CriticalNeuron, CriticalResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _neuron(layer, kind, ch, rank):
    mod = f"model.layers.{layer}.{'mlp.down_proj' if kind == 'mlp.down_proj' else 'self_attn.o_proj'}"
    return CriticalNeuron(name=f"{mod}:{ch}", module=mod, channel=ch, layer=layer, kind=kind, rank=rank, score=1.0)


def make_result(curve, crit_layers, top_layers, epsilon=1.0, converged=True):
    crit = [_neuron(l, k, i, i) for i, (l, k) in enumerate(crit_layers)]
    top = [_neuron(l, k, 100 + i, i) for i, (l, k) in enumerate(top_layers)]
    return CriticalResult(model="/x/toy-model", neurons=crit if converged else [], converged=converged,
                          epsilon=epsilon, clean_nll=2.0, final_nll=2.0 + 2.3 * curve[-1][1],
                          log10_ratio=curve[-1][1], curve=curve, params={}, timings={}, stats={}, versions={},
                          top_ranked=top)


@pytest.fixture
def result():
    curve = [[1, 0.01], [2, 0.05], [4, 0.2], [8, 0.7], [6, 0.4], [7, 1.3]]
    crit = [(3, "mlp.down_proj")] * 4 + [(1, "mlp.down_proj")] * 2 + [(3, "attn.o_proj")]
    top = crit + [(0, "mlp.down_proj")] * 3
    return make_result(curve, crit, top)


def _check_png(path, fig):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    w, h = fig.get_size_inches()
    assert abs(img.shape[1] - w * 120) <= 2 and abs(img.shape[0] - h * 120) <= 2  # saved at dpi 120
    assert img[..., :3].std() > 0.01  # not a blank canvas


def _check_svg(path, ids=()):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    found = {el.get("id") for el in root.iter()}
    for i in ids:
        assert i in found, f"{i} not in {path}"


def test_curve_figure_points_epsilon_and_files(result, tmp_path):
    fig = plots.curve_figure(result)
    ax = fig.axes[0]
    (line,) = [l for l in ax.get_lines() if l.get_gid() == "curve"]
    xy = line.get_xydata()
    assert len(xy) == len(result.curve)
    assert list(xy[:, 0]) == sorted(n for n, _ in result.curve)  # sorted by n
    (eps,) = [l for l in ax.get_lines() if l.get_gid() == "epsilon"]
    assert set(eps.get_ydata()) == {1.0}
    (crit,) = [l for l in ax.get_lines() if l.get_gid() == "critical"]
    assert set(crit.get_xdata()) == {len(result.neurons)}
    png, svg = plots.save(fig, tmp_path, "curve")
    _check_png(png, fig)
    _check_svg(svg, ids=("curve", "epsilon", "critical"))


def test_curve_not_converged_has_no_critical_marker():
    r = make_result([[1, 0.0], [2, 0.1]], [], [(0, "mlp.down_proj")], converged=False)
    ax = plots.curve_figure(r).axes[0]
    assert [l.get_gid() for l in ax.get_lines()].count("critical") == 0


def test_layer_map_counts(result, tmp_path):
    fig = plots.layer_map_figure(result)
    maps = {im.get_gid(): im.get_array() for ax in fig.axes for im in ax.get_images()}
    crit = maps["map:critical set"]
    top = maps[f"map:top {len(result.top_ranked)} ranked"]
    kinds = sorted({"mlp.down_proj", "attn.o_proj"})
    assert crit.shape == (4, len(kinds))  # layers 0..3
    assert int(crit.sum()) == len(result.neurons) and int(top.sum()) == len(result.top_ranked)
    assert crit[3, kinds.index("mlp.down_proj")] == 4 and crit[1, kinds.index("mlp.down_proj")] == 2
    assert crit[3, kinds.index("attn.o_proj")] == 1 and top[0, kinds.index("mlp.down_proj")] == 3
    png, svg = plots.save(fig, tmp_path, "layers")
    _check_png(png, fig)
    _check_svg(svg)


def test_layer_map_n_layers_pads_rows(result):
    fig = plots.layer_map_figure(result, n_layers=30)
    assert fig.axes[0].get_images()[0].get_array().shape[0] == 30


def _row(ck, n, conv=True, key="k"):
    return {"checkpoint": ck, "n_critical": n, "converged": conv, "text": "t", "key": key}


def test_sweep_sizes_bars_and_dots():
    rows = [_row("a", 3), _row("a", 5), _row("a", 0, conv=False), _row("b", 10), _row("c", 0, conv=False)]
    fig = plots.sweep_sizes_figure(rows)
    ax = fig.axes[0]
    assert len(ax.containers) == 1 and len(ax.patches) == 3  # one ranker: one bar per checkpoint
    heights = [b.get_height() for b in ax.containers[0]]
    assert heights == [4, 10, 0]  # medians of converged runs per checkpoint, in first-seen order
    dots = {c.get_gid(): c.get_offsets() for c in ax.collections}
    assert len(dots["runs"]) == 3 and len(dots["not_converged"]) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_sweep_sizes_one_series_per_ranker():
    rows = [_row("a", 3), _row("a", 9), _row("b", 10), _row("b", 20)]
    rows[1]["params"] = rows[3]["params"] = {"ranker": "random"}
    ax = plots.sweep_sizes_figure(rows).axes[0]
    series = {c.patches[0].get_gid(): [b.get_height() for b in c] for c in ax.containers}
    assert series == {"bars:sensitivity": [3, 10], "bars:random": [9, 20]}


def test_curves_and_jaccard_figures(result, tmp_path):
    other = make_result([[1, 0.0], [2, 0.01], [4, 0.02]], [], [(0, "mlp.down_proj")], converged=False)
    fig = plots.curves_figure({"sensitivity": result, "random": other})
    gids = {l.get_gid(): len(l.get_xydata()) for l in fig.axes[0].get_lines()}
    assert gids["curve:sensitivity"] == len(result.curve) and gids["curve:random"] == 3
    fig = plots.jaccard_figure(["a", "b"], [[1.0, 0.25], [0.25, 1.0]])
    (im,) = fig.axes[0].get_images()
    assert np.allclose(im.get_array(), [[1, 0.25], [0.25, 1]])
    _check_svg(plots.save(fig, tmp_path, "j", formats=("svg",))[0], ids=("jaccard",))


def test_plot_result_and_plot_cli_from_json(result, tmp_path, capsys):
    from achilles_fast import plot_result
    paths = plot_result(result, tmp_path / "p", stem="r")
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["r_curve.png", "r_curve.svg", "r_layers.png",
                                                           "r_layers.svg"]
    result.to_json(str(tmp_path / "res.json"))
    from achilles_fast.cli import main
    assert main(["plot", str(tmp_path / "res.json"), "--out", str(tmp_path / "q")]) == 0
    names = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert names == ["res_curve.png", "res_curve.svg", "res_layers.png", "res_layers.svg"]
    # a {method: result} file from `baselines --out` also gets the combined curves plot
    (tmp_path / "multi.json").write_text(json.dumps({"a": result.to_dict(), "b": result.to_dict()}))
    assert main(["plot", str(tmp_path / "multi.json"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "multi_curves.png").exists() and (tmp_path / "m" / "multi_a_layers.svg").exists()


def test_find_plot_cli_on_stories(tmp_path):
    from achilles_fast.cli import main
    out = tmp_path / "find"
    rc = main(["find", str(STORIES), "--k", "4", "--max-tokens", "64",
               "--epsilon", "0.05", "--max-neurons", "30", "--quiet", "--plot", str(out), "--out",
               str(tmp_path / "r.json")])
    assert rc in (0, 1)
    res = CriticalResult.load(str(tmp_path / "r.json"))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["find_curve.png", "find_curve.svg", "find_layers.png", "find_layers.svg"]
    root = ET.parse(out / "find_curve.svg").getroot()
    assert root.tag.endswith("svg")
    # the curve in the SVG has one marker per evaluated point: re-render and count
    fig = plots.curve_figure(res)
    (line,) = [l for l in fig.axes[0].get_lines() if l.get_gid() == "curve"]
    assert len(line.get_xydata()) == len(res.curve) >= 1
