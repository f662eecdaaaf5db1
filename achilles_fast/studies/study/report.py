"""The study's report: ``report.md`` and a self-contained ``report.html`` (figures embedded as PNG data URIs),
rendered from the same section blocks, and its figures (each written atomically: an interrupted study never
leaves a half-written file)."""
from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Union

from .. import plots
from .section import FAILS, HOLDS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIG_DIR = "figures"


# ---- figures ------------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, out_dir: Union[str, Path], stem: str) -> List[str]:
    """``fig`` as <out_dir>/figures/<stem>.png and .svg, each written atomically."""
    d = Path(out_dir) / FIG_DIR
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d, prefix=".tmp-") as tmp:
        paths = []
        for p in plots.save(fig, tmp, stem):
            dest = d / Path(p).name
            os.replace(p, dest)
            paths.append(str(dest))
    return paths


def figure_paths(out_dir: Union[str, Path], stem: str) -> List[Path]:
    return [Path(out_dir) / FIG_DIR / f"{stem}.{fmt}" for fmt in plots.FORMATS]


# ---- shared -------------------------------------------------------------------------------------------------------
def _title(doc: Dict) -> str:
    return doc.get("title") or f"achilles_fast study: {doc['model']}"


def _header_facts(doc: Dict) -> List[tuple]:
    """The facts table under the title: the document's own ``facts`` ((label, value) pairs), else the study's."""
    if "facts" in doc:
        return [tuple(f) for f in doc["facts"]]
    cfg = doc["config"]
    facts = [("model", doc["model"]),
             ("method", f"K = {cfg['k']}, alpha = {cfg['alpha']:g}, epsilon = {cfg['epsilon']:g}, scope "
                        f"{cfg['scope']}, ranking {cfg['ranking']}, {cfg['strategy']} search, seed {cfg['seed']}"),
             ("texts", doc["texts"]),
             ("sections", ", ".join(s["title"] for s in doc["sections"])),
             ("time", f"{doc['seconds']:.0f} s in this run" + ("" if not doc.get("reused") else
                      f" (reused: {', '.join(doc['reused'])})")),
             ("versions", ", ".join(f"{k} {v}" for k, v in doc["versions"].items()))]
    return facts


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---- Markdown -----------------------------------------------------------------------------------------------------
def _md_escape(s: Any) -> str:
    return _cell(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Dict) -> List[str]:
    lines = [f"*{t['title']}*", "", "| " + " | ".join(_md_escape(c) for c in t["columns"]) + " |",
             "|" + "---|" * len(t["columns"])]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in t["rows"]]
    return lines + [""]


def render_markdown(doc: Dict) -> str:
    out = [f"# {_title(doc)}", ""]
    out += [f"- **{k}**: {v}" for k, v in _header_facts(doc)] + [""]
    out += ["## Verdicts at a glance", "", "| section | claim | verdict |", "|---|---|---|"]
    for i, s in enumerate(doc["sections"], 1):
        for v in s["verdicts"]:
            out.append(f"| {i}. {s['title']} | {_md_escape(v['claim'])} | **{v['verdict']}** |")
    out.append("")
    for i, s in enumerate(doc["sections"], 1):
        out += [f"## {i}. {s['title']}", "", f"**The paper's claim.** {s['claim']}", "",
                "**What was measured.** " + " ".join(s["measured"]), ""]
        for v in s["verdicts"]:
            out.append(f"- **Verdict: {v['verdict']}**: {v['claim']}. {v['detail']}")
        out.append("")
        for t in s["tables"]:
            out += _md_table(t)
        for f in s["figures"]:
            out += [f"![{f['caption']}]({FIG_DIR}/{f['stem']}.png)", "", f"*{f['caption']}* "
                    f"([SVG]({FIG_DIR}/{f['stem']}.svg))", ""]
    return "\n".join(out).rstrip() + "\n"


# ---- HTML ---------------------------------------------------------------------------------------------------------
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f7; }
td.text { max-width: 28em; white-space: pre-wrap; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
.facts td:first-child { font-weight: 600; white-space: nowrap; }
.verdict { padding: .35em .6em; margin: .3em 0; border-left: 4px solid #999; background: #fafafa; }
.badge { display: inline-block; padding: .05em .5em; border-radius: .8em; font-size: .85em; font-weight: 600;
         color: #fff; background: #888; white-space: nowrap; }
.holds .badge, .badge.holds { background: #2e7d32; } .holds { border-left-color: #2e7d32; }
.fails .badge, .badge.fails { background: #c62828; } .fails { border-left-color: #c62828; }
.claim { background: #f0f4ff; padding: .5em .8em; border-radius: 4px; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
"""


def _cls(verdict: str) -> str:
    return {HOLDS: "holds", FAILS: "fails"}.get(verdict, "na")


def _e(s: Any) -> str:
    return html.escape(_cell(s), quote=True)


def _html_table(t: Dict) -> str:
    long_cols = {i for i, c in enumerate(t["columns"]) if c in ("clean", "masked", "prompt", "note")}
    head = "".join(f"<th>{_e(c)}</th>" for c in t["columns"])
    body = "".join("<tr>" + "".join(f"<td class=\"text\">{_e(c)}</td>" if i in long_cols else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in t["rows"])
    return f"<table><caption>{_e(t['title'])}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(doc: Dict, out_dir: Union[str, Path]) -> str:
    """Self-contained HTML: every figure read from <out_dir>/figures/<stem>.png and embedded as a data URI."""
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\"/>",
             f"<title>{_e(_title(doc))}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(_title(doc))}</h1>", "<table class=\"facts\"><tbody>"]
    parts += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in _header_facts(doc)]
    parts.append("</tbody></table><h2>Verdicts at a glance</h2><table><thead><tr><th>section</th><th>claim</th>"
                 "<th>verdict</th></tr></thead><tbody>")
    for i, s in enumerate(doc["sections"], 1):
        for v in s["verdicts"]:
            parts.append(f"<tr><td><a href=\"#{_e(s['name'])}\">{i}. {_e(s['title'])}</a></td><td>{_e(v['claim'])}"
                         f"</td><td><span class=\"badge {_cls(v['verdict'])}\">{_e(v['verdict'])}</span></td></tr>")
    parts.append("</tbody></table>")
    for i, s in enumerate(doc["sections"], 1):
        parts.append(f"<h2 id=\"{_e(s['name'])}\">{i}. {_e(s['title'])}</h2>")
        parts.append(f"<p class=\"claim\"><b>The paper's claim.</b> {_e(s['claim'])}</p>")
        parts.append(f"<p><b>What was measured.</b> {_e(' '.join(s['measured']))}</p>")
        for v in s["verdicts"]:
            parts.append(f"<div class=\"verdict {_cls(v['verdict'])}\"><span class=\"badge\">{_e(v['verdict'])}"
                         f"</span> <b>{_e(v['claim'])}.</b> {_e(v['detail'])}</div>")
        parts += [_html_table(t) for t in s["tables"]]
        for f in s["figures"]:
            png = Path(out_dir) / FIG_DIR / f"{f['stem']}.png"
            parts.append(f"<figure><img alt=\"{_e(f['caption'])}\" src=\"{_data_uri(png)}\"/>"
                         f"<figcaption>{_e(f['caption'])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def verdict_lines(doc: Dict) -> List[str]:
    """One line per verdict (for the terminal)."""
    return [f"[{v['verdict']}] {s['title']}: {v['claim']}. {v['detail']}" for s in doc["sections"]
            for v in s["verdicts"]]
