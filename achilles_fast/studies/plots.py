"""Plots as matplotlib Figures (no pyplot state, so headless-safe), saved as PNG and SVG by ``save``.

- ``curve_figure``: the phase-transition curve, log10 PPL ratio vs number of masked neurons, epsilon marked.
- ``layer_map_figure``: layer x component counts of the critical set and of the top-ranked neurons (the
  paper's Figure 2 style).
- ``sweep_sizes_figure``: critical-set size per checkpoint across a sweep's rows.
- ``curves_figure``: several rankers' curves on one axis (baselines vs sensitivity).
- ``jaccard_figure``: overlap matrix of critical sets across texts.
"""
from __future__ import annotations

import hashlib

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from ..method.result import CriticalResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")


def save(fig: Figure, out_dir, stem: str, formats: Sequence[str] = FORMATS, dpi: int = 120) -> List[str]:
    """Write ``fig`` as <out_dir>/<stem>.<fmt> for each format; returns the paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = d / f"{stem}.{fmt}"
        fig.savefig(p, format=fmt, dpi=dpi)
        paths.append(str(p))
    return paths


def canvas(figsize, layout: Optional[str] = "constrained") -> Figure:
    """A new matplotlib Figure (no pyplot state). matplotlib is imported here, at the first figure, and not when
    the CLI starts (0.24 s of every command's start-up, measured with -X importtime)."""
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout=layout)


def _new(figsize=(6.4, 4.2)):
    fig = canvas(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _as_result(r) -> CriticalResult:
    return r if isinstance(r, CriticalResult) else CriticalResult.from_dict(r)


# ---- (1) phase-transition curve --------------------------------------------------------------------------
def epsilon_line(ax, eps: float):
    """The epsilon threshold as every figure draws it: a dashed red line, labelled for the legend."""
    return ax.axhline(eps, color="tab:red", ls="--", lw=1, label=f"epsilon = {eps:g}", gid="epsilon")


def curve_figure(result, title: Optional[str] = None) -> Figure:
    """log10(PPL_masked / PPL_clean) at every evaluated n; epsilon as a dashed line, the critical n marked."""
    r = _as_result(result)
    fig, ax = _new()
    pts = sorted((int(n), float(v)) for n, v in r.curve)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.plot(xs, ys, marker="o", ms=4, lw=1.2, label="evaluated prefix", gid="curve")
    epsilon_line(ax, r.epsilon)
    if r.converged and r.neurons:
        n = len(r.neurons)
        ax.axvline(n, color="tab:green", ls=":", lw=1, label=f"critical set: {n}", gid="critical")
    if xs and max(xs) / max(1, min(xs)) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel("number of masked neurons (ranking prefix)")
    ax.set_ylabel("log10(PPL masked / PPL clean)")
    ax.set_title(title or f"{_short(r.model, 40)}: phase transition", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def curves_figure(results: Mapping[str, object], title: str = "rankers through the same Stage 2",
                  random: Optional[Mapping] = None) -> Figure:
    """One curve per named result (e.g. sensitivity vs baselines) on shared axes; ``random``: the paper's random
    baseline (``studies.baselines.random_levels``) as mean +- std error bars per level (the paper's comparison)."""
    fig, ax = _new()
    eps = None
    if random is not None:
        ax.errorbar(random["levels"], random["log10_ratio_mean"], yerr=random["log10_ratio_std"], fmt="s", ms=3,
                    capsize=3, lw=1, color="tab:gray", gid="random_levels",
                    label=f"random, {random['pool']} pool ({random['runs']} runs, mean +- std)")
    for name, res in results.items():
        r = _as_result(res)
        pts = sorted((int(n), float(v)) for n, v in r.curve)
        label = f"{name} ({len(r.neurons)})" if r.converged else f"{name} (not reached)"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1.2, label=label, gid=f"curve:{name}")
        eps = r.epsilon
    if eps is not None:
        epsilon_line(ax, eps)
    ax.set_xscale("log")  # n >= 1
    ax.set_xlabel("number of masked neurons")
    ax.set_ylabel("log10(PPL masked / PPL clean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


# ---- (2) layer x component map ---------------------------------------------------------------------------
def layer_counts(neurons: Sequence, layers: Sequence[int], kinds: Sequence[str]):
    """Counts [len(layers), len(kinds)] of neurons per (layer, kind); neurons outside layers go to no cell."""
    import numpy as np
    grid = np.zeros((len(layers), len(kinds)), dtype=int)
    li = {l: i for i, l in enumerate(layers)}
    ki = {k: i for i, k in enumerate(kinds)}
    for n in neurons:
        if n.layer in li and n.kind in ki:
            grid[li[n.layer], ki[n.kind]] += 1
    return grid


def layer_map_figure(result, n_layers: Optional[int] = None, title: Optional[str] = None) -> Figure:
    """Heat maps (layer rows x component columns) of the critical set and of the top-ranked neurons."""
    r = _as_result(result)
    sets = [("critical set", r.neurons), (f"top {len(r.top_ranked)} ranked", r.top_ranked)]
    every = list(r.neurons) + list(r.top_ranked)
    seen_layers = [n.layer for n in every if n.layer is not None]
    top = max(seen_layers, default=0) + 1
    layers = list(range(max(top, n_layers or 0)))
    kinds = sorted({n.kind for n in every}) or ["mlp.down_proj"]
    fig = canvas((max(7.0, 2.5 + 1.2 * len(kinds) * 2), 1.6 + 0.3 * max(len(layers), 5)))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, (label, ns) in zip(axes, sets):
        grid = layer_counts(ns, layers, kinds)
        im = ax.imshow(grid, aspect="auto", cmap="Reds", origin="lower", vmin=0, vmax=max(1, int(grid.max())))
        im.set_gid(f"map:{label}")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if grid[i, j]:
                    ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=7)
        ax.set_xlabel("component")
        ax.set_ylabel("layer")
        ax.set_title(f"{label} ({int(grid.sum())})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title or f"{_short(r.model)}: where the neurons sit", fontsize=10)
    return fig


# ---- (3) sweeps ------------------------------------------------------------------------------------------
def sweep_sizes_figure(rows: Sequence[Mapping], title: str = "critical-set size per checkpoint") -> Figure:
    """Bars per checkpoint (median size over converged rows), one bar series per ranker; every row as a dot."""
    import statistics
    names: List[str] = []
    rankers: List[str] = []
    by: Dict[tuple, List[Mapping]] = {}
    for row in rows:
        ck, rk = row["checkpoint"], (row.get("params") or {}).get("ranker", "sensitivity")
        names += [ck] if ck not in names else []
        rankers += [rk] if rk not in rankers else []
        by.setdefault((ck, rk), []).append(row)
    fig, ax = _new((max(4.0, 1.2 * len(names) * max(1, len(rankers)) ** 0.5 + 2), 4.2))
    width = 0.8 / len(rankers)
    dots_x, dots_y, failed_x = [], [], []
    for s_i, rk in enumerate(rankers):
        xs, med = [], []
        for i, ck in enumerate(names):
            x = i - 0.4 + width * (s_i + 0.5)
            rs = by.get((ck, rk), [])
            sizes = [int(r["n_critical"]) for r in rs if r["converged"]]
            xs.append(x)
            med.append(statistics.median(sizes) if sizes else 0)
            dots_x += [x] * len(sizes)
            dots_y += sizes
            failed_x += [x] * (len(rs) - len(sizes))
        bars = ax.bar(xs, med, width=width * 0.9, alpha=0.6, label=f"{rk} (median)", gid=f"bars:{rk}")
        for bar, m in zip(bars, med):
            ax.annotate(f"{m:g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.scatter(dots_x, dots_y, color="k", s=10, zorder=3, label="one run", gid="runs")
    if failed_x:
        ax.scatter(failed_x, [0] * len(failed_x), marker="x", color="tab:red", zorder=3, label="not converged",
                   gid="not_converged")
    ax.set_xticks(range(len(names)), [_short(n, 24) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("critical neurons")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def heatmap_figure(rows: Sequence[str], cols: Sequence[str], matrix, title: str, *, vmin=None, vmax=None,
                   cmap: str = "viridis", label: str = "", gid: str = "heatmap") -> Figure:
    """Matrix [rows x cols] as an annotated heat map; None cells are blank."""
    import numpy as np
    m = np.array([[np.nan if v is None else float(v) for v in r] for r in matrix], dtype=float)
    fig, ax = _new((2.5 + 0.6 * len(cols), 2.0 + 0.5 * len(rows)))
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap, gid=gid, aspect="auto")
    lo, hi = im.get_clim()
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                dark = (m[i, j] - lo) < 0.5 * (hi - lo) if hi > lo else True
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
    ax.set_xticks(range(len(cols)), [_short(c, 24, tail=True) for c in cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [_short(r, 24, tail=True) for r in rows], fontsize=8)
    ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.05)
    if label:
        cb.set_label(label, fontsize=8)
    return fig


def jaccard_figure(names: Sequence[str], matrix, title: str = "critical-set overlap (Jaccard)") -> Figure:
    return heatmap_figure(names, names, matrix, title, vmin=0, vmax=1, gid="jaccard")


# ---- conveniences ----------------------------------------------------------------------------------------
def plot_result(result, out_dir, stem: str = "result", formats: Sequence[str] = FORMATS) -> List[str]:
    """Curve + layer map of one result -> <stem>_curve.{png,svg}, <stem>_layers.{png,svg}."""
    paths = save(curve_figure(result), out_dir, f"{stem}_curve", formats)
    paths += save(layer_map_figure(result), out_dir, f"{stem}_layers", formats)
    return paths


def plot_sweep(rows: Sequence[Mapping], out_dir, formats: Sequence[str] = FORMATS, per_row: bool = True) -> List[str]:
    """Sizes per checkpoint, plus a curve and layer map for every row (per_row) -> file paths."""
    paths = save(sweep_sizes_figure(rows), out_dir, "sweep_sizes", formats)
    if per_row:
        for row in rows:
            stem = file_stem(f"{row['checkpoint']}_{row['text']}_{row['key'][:8]}")
            paths += plot_result(row["result"], out_dir, stem, formats)
    return paths


def _short(s: str, n: int = 48, tail: bool = False) -> str:
    """A label of at most ``n`` characters: the last path segment cut at its end, or (``tail``) the whole label cut
    at its start, keeping what tells checkpoints apart (``...@step400``)."""
    s = str(s)
    if "/" in s and not tail:
        s = s.rstrip("/").rsplit("/", 1)[-1]
    if len(s) <= n:
        return s
    return "…" + s[-(n - 1):] if tail else s[: n - 1] + "…"


MAX_STEM = 100  # characters of a label kept in a file name (a hash of the whole label follows a cut)


def file_stem(label: str) -> str:
    """A label (checkpoint, text, ...) as a file name: letters, digits, - _ . only, never hidden (no leading
    '.'), at most ``MAX_STEM`` characters plus, when cut, 8 hex digits of the whole label's hash (names stay
    distinct)."""
    s = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in label).lstrip(".") or "_"
    if len(s) > MAX_STEM:
        s = f"{s[:MAX_STEM]}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"
    return s
