"""compare.json, report.md, a self-contained report.html and the figures (PNG + SVG) of a comparison.

The Markdown/HTML renderers are the study's (one report format); this module only builds the section blocks and
figures from the compare document."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from .. import plots
from ..study.section import block, fmt, table, verdict
from ...utils import atomic_write, write_json
from ..study.report import render_html, render_markdown, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_report(doc: Dict[str, Any], run: Dict[str, Any], out_dir: Path) -> List[str]:
    """Write compare.json (exactly the compare keys), run.json (parameters, timings), the figures, report.md and
    report.html into ``out_dir``; -> the paths written."""
    write_json(doc, out_dir / "compare.json")
    write_json(run, out_dir / "run.json")
    rep = report_doc(doc, run)
    paths = [str(out_dir / "compare.json"), str(out_dir / "run.json")]
    for stem, fig in figures(doc, run).items():
        paths += save_figure(fig, out_dir, stem)
    atomic_write(out_dir / "report.md", render_markdown(rep))
    atomic_write(out_dir / "report.html", render_html(rep, out_dir))
    return paths + [str(out_dir / "report.md"), str(out_dir / "report.html")]


def _names(doc) -> List[str]:
    return [c["name"] for c in doc["checkpoints"]]


def _off_diagonal(m: Sequence[Sequence[Optional[float]]]) -> List[float]:
    return [v for i, r in enumerate(m) for j, v in enumerate(r) if i != j and v is not None]


# ---- figures ------------------------------------------------------------------------------------------------------
def figures(doc: Dict[str, Any], run: Dict[str, Any]) -> Dict[str, Figure]:
    names = _names(doc)
    eps = run["params"]["epsilon"]
    figs = {"jaccard": plots.jaccard_figure(names, doc["jaccard"]),
            "transfer": plots.heatmap_figure(names, names, doc["transfer"], f"transfer: row's set masked in\n"
                                             f"column's checkpoint (epsilon {eps:g})", cmap="magma",
                                             label="log10 PPL ratio", gid="transfer")}
    if doc["persistence"]:
        figs["persistence"] = persistence_figure(doc["persistence"], names)
    figs["series"] = series_figure(doc["series"], eps)
    return figs


def persistence_figure(entries: Sequence[Dict], names: Sequence[str], max_rows: int = 60) -> Figure:
    """Neuron x checkpoint: colour = log10(1 + rank) in that checkpoint's ranking, a dot where it is critical."""
    entries = list(entries)[:max_rows]
    m = np.array([[np.nan if e["rank"][c] is None else math.log10(1 + e["rank"][c]) for c in names]
                  for e in entries], dtype=float)
    fig = plots.canvas((2.5 + 0.6 * len(names), 1.5 + 0.22 * len(entries)), layout=None)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap="viridis_r", aspect="auto", gid="persistence")
    for i, e in enumerate(entries):
        for j, c in enumerate(names):
            if c in e["critical_in"]:
                ax.plot(j, i, "o", color="r", markersize=4)
    ax.set_xticks(range(len(names)), [plots._short(n, 24, tail=True) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(entries)), [e["neuron"] for e in entries], fontsize=6)
    ax.set_title("persistence: rank of each critical neuron (red dot: in the critical set)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05).set_label("log10(1 + rank); blank: not ranked", fontsize=8)
    fig.tight_layout()
    return fig


def series_figure(series: Dict, epsilon: float) -> Figure:
    """|S| and the first checkpoint's set's log10 ratio along the checkpoints."""
    names = series["order"]
    x = np.arange(len(names))
    fig = plots.canvas((max(5.0, 0.7 * len(names) + 2), 5.0), layout=None)
    a1, a2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    sizes = [np.nan if v is None else v for v in series["n_critical"]]
    a1.plot(x, sizes, "o-", gid="sizes")
    a1.set_ylabel("|critical set|")
    a1.grid(alpha=0.3)
    a1.set_xticks(x, [""] * len(names))
    first = [np.nan if v is None else v for v in series["first_set_log10_ratio"]]
    a2.plot(x, first, "s-", color="C3", gid="first_set")
    plots.epsilon_line(a2, epsilon)
    a2.set_ylabel(f"log10 ratio of\n{plots._short(names[0], 20, tail=True)}'s set")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    a2.set_xticks(x, [plots._short(n, 24, tail=True) for n in names], rotation=45, ha="right", fontsize=8)
    a1.set_title("series along the checkpoints", fontsize=10)
    fig.tight_layout()
    return fig


# ---- report blocks ------------------------------------------------------------------------------------------------
def report_doc(doc: Dict[str, Any], run: Dict[str, Any]) -> Dict[str, Any]:
    names = _names(doc)
    p = run["params"]
    facts = [("checkpoints", ", ".join(names)),
             ("method", f"K = {p['k']}, alpha = {p['alpha']:g}, epsilon = {p['epsilon']:g}, scope {p['scope']}, "
                        f"ranking {p['ranking']}, {p['strategy']} search, seed {p['seed']}, max_tokens "
                        f"{p['max_tokens']}"),
             ("text", f"{run['text']} (sha {run['text_sha']})"),
             ("compare", f"top-K {run['compare']['top_k']}, {run['compare']['random_seeds']} random set(s) per "
                         f"transfer cell, order {run['compare']['order']}"),
             ("time", ", ".join(f"{k} {v:.1f} s" for k, v in run["seconds"].items()))]
    return {"title": "achilles_fast compare: " + ", ".join(plots._short(n, 24) for n in names), "facts": facts,
            "sections": [_sets_block(doc), _overlap_block(doc), _transfer_block(doc, p["epsilon"]),
                         _persistence_block(doc), _series_block(doc, p["epsilon"])]}


def _sets_block(doc) -> Dict:
    rows = []
    for c in doc["checkpoints"]:
        if c["error"]:
            rows.append([c["name"], "-", "-", "-", "-", f"error: {c['error']}"])
            continue
        head = ", ".join(c["neurons"][:6]) + (" ..." if len(c["neurons"]) > 6 else "")
        rows.append([c["name"], c["n_critical"], fmt(c["log10_ratio"]), "yes" if c["converged"] else "no",
                     "-" if c.get("paper_entries") is None else c["paper_entries"], head])
    failed = [c["name"] for c in doc["checkpoints"] if c["error"]]
    return block("sets", "Critical set of each checkpoint",
                 "Each checkpoint has a small critical set whose masking makes perplexity explode.",
                 [f"One find per checkpoint ({len(doc['checkpoints'])}, {len(failed)} failed)."],
                 [verdict("every checkpoint has a critical set (the search converged)",
                          None if failed and len(failed) == len(rows) else
                          all(c["converged"] for c in doc["checkpoints"] if not c["error"]),
                          ", ".join(f"{c['name']}: {c['n_critical']}" for c in doc["checkpoints"] if not c["error"]))],
                 tables=[table("critical sets", ["checkpoint", "|S|", "log10 ratio", "converged", "paper entries",
                                                 "neurons"], rows)])


def _matrix_table(title: str, names: Sequence[str], m) -> Dict:
    return table(title, [""] + list(names), [[n] + [fmt(v, 2) for v in r] for n, r in zip(names, m)])


def _overlap_block(doc) -> Dict:
    names = _names(doc)
    jac, rho = _off_diagonal(doc["jaccard"]), _off_diagonal(doc["spearman"])
    detail = (f"off-diagonal Jaccard min {fmt(min(jac), 2)}, mean {fmt(float(np.mean(jac)), 2)}; Spearman of the "
              f"scores min {fmt(min(rho), 2) if rho else 'n/a'}" if jac else "fewer than two finished checkpoints")
    return block("overlap", "Do the critical neurons persist?",
                 "Critical neurons survive fine-tuning and quantisation (the authors' logs: R1-Distill-Llama-8B has "
                 "Llama-3-8B's channels 788, 1384, 4062).",
                 ["Jaccard of the critical sets; Spearman correlation of the Stage 1 scores over the union of the "
                  "two checkpoints' top-K channels."],
                 [verdict("the critical sets are the same (Jaccard 1 for every pair)",
                          None if not jac else min(jac) == 1.0, detail),
                  verdict("the critical sets overlap (Jaccard >= 0.5 for every pair)",
                          None if not jac else min(jac) >= 0.5, detail)],
                 tables=[_matrix_table("Jaccard of the critical sets", names, doc["jaccard"]),
                         _matrix_table("Spearman of Stage 1 scores (top-K union)", names, doc["spearman"])],
                 figures=[{"stem": "jaccard", "caption": "Jaccard overlap of the critical sets"}])


def _transfer_block(doc, eps: float) -> Dict:
    names = _names(doc)
    n = len(names)
    cells = [(i, j) for i in range(n) for j in range(n) if i != j and doc["transfer"][i][j] is not None]
    breaks = [(i, j) for i, j in cells if doc["transfer"][i][j] >= eps]
    rnd = [(i, j) for i, j in cells if doc["transfer_random"][i][j] is not None
           and doc["transfer_random"][i][j] >= eps]
    rows = [[names[i]] + [f"{fmt(doc['transfer'][i][j], 2)} (random {fmt(doc['transfer_random'][i][j], 2)})"
                          for j in range(n)] for i in range(n)]
    return block("transfer", "Does one checkpoint's set break another?",
                 "If the critical neurons persist, one checkpoint's set also collapses its relatives (while the "
                 "LLMSuperWeight issue #4 reports chat fine-tunes surviving their base model's super weight).",
                 [f"Row i's critical set masked in column j's checkpoint: log10 PPL ratio on j's clean model "
                  f"(diagonal: i's own set); in brackets the mean of random down_proj sets of the same size."],
                 [verdict(f"every checkpoint's set breaks every other checkpoint (log10 ratio >= {eps:g})",
                          None if not cells else len(breaks) == len(cells),
                          f"{len(breaks)} of {len(cells)} off-diagonal cells reach epsilon"),
                  verdict("random sets of the same size do not", None if not cells else not rnd,
                          f"{len(rnd)} of {len(cells)} random-control cells reach epsilon")],
                 tables=[table("transfer (row's set masked in column's checkpoint)", [""] + names, rows)],
                 figures=[{"stem": "transfer", "caption": "transfer matrix (log10 PPL ratio)"}])


def _persistence_block(doc) -> Dict:
    names = _names(doc)
    ents = doc["persistence"]
    everywhere = [e["neuron"] for e in ents if len(e["critical_in"]) == sum(not c["error"] for c in doc["checkpoints"])]
    rows = [[e["neuron"], f"{len(e['critical_in'])}/{len(names)}"]
            + ["-" if e["rank"][c] is None else e["rank"][c] for c in names] for e in ents[:40]]
    return block("persistence", "Which neurons persist?", "A few channels are critical in every checkpoint.",
                 [f"{len(ents)} neuron(s) in the union of the sets; rank of each in every checkpoint's ranking "
                  "(0 = most sensitive; '-' = not in the stored ranking)."],
                 [verdict("some neuron is critical in every checkpoint", None if not ents else bool(everywhere),
                          (", ".join(everywhere[:8]) + (" ..." if len(everywhere) > 8 else "")) or "none")],
                 tables=[table("persistence (first 40 neurons)", ["neuron", "critical in"] + names, rows)],
                 figures=[{"stem": "persistence", "caption": "rank of each critical neuron per checkpoint"}]
                 if ents else [])


def _series_block(doc, eps: float) -> Dict:
    s = doc["series"]
    names = s["order"]
    rows = [[c, "-" if n is None else n, fmt(r)] + [", ".join(sorted(k for k, v in s["enters_top_k"].items()
                                                                     if v == c)[:6])]
            for c, n, r in zip(names, s["n_critical"], s["first_set_log10_ratio"])]
    return block("series", "When does the set appear?",
                 "Critical neurons emerge during training and stay.",
                 [f"Along the checkpoints in order: |S|, the log10 ratio of {names[0]}'s set, and the neurons of the "
                  f"sets entering the top-{s['top_k']} of the ranking at each checkpoint."],
                 [verdict(f"{names[0]}'s set stays critical along the series (log10 ratio >= {eps:g})",
                          None if any(r is None for r in s["first_set_log10_ratio"]) else
                          all(r >= eps for r in s["first_set_log10_ratio"]),
                          ", ".join(f"{c}: {fmt(r, 2)}" for c, r in zip(names, s["first_set_log10_ratio"])))],
                 tables=[table("series", ["checkpoint", "|S|", f"log10 ratio of {names[0]}'s set",
                                          "enter the top-K here"], rows)],
                 figures=[{"stem": "series", "caption": "critical-set size and the first set's effect along the "
                                                        "checkpoints"}])
