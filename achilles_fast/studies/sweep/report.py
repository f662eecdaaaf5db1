"""Sweep reports: flat per-run tables, per-checkpoint summaries, CSV/JSON/Parquet export (pandas and pyarrow are
optional: ``write_table(..., "parquet")`` needs pyarrow, ``rows_dataframe`` needs pandas)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import statistics
import sys
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ...utils import atomic_write, write_json
from .db import SweepDB

PARAM_COLUMNS = ("ranker", "epsilon", "k", "alpha", "seed", "max_neurons", "scope", "ranking", "strategy",
                 "max_tokens")
LN10 = math.log(10.0)


TABLE_FORMATS = ("csv", "json", "parquet")


def load_rows(db: str) -> List[Dict[str, Any]]:
    """The database's rows; a checkpoint label run with several weight versions (changed in place) is split into
    one label per version, ``label@digest`` (first 8 hex digits; ``@?`` for rows written before digests were
    recorded), so no table or plot mixes two versions."""
    with SweepDB(db, readonly=True) as store:
        rows = store.rows()
    versions: Dict[str, set] = {}
    for r in rows:
        versions.setdefault(r["checkpoint"], set()).add(r.get("weights"))
    for r in rows:
        if len(versions[r["checkpoint"]]) > 1:
            r["checkpoint"] = f"{r['checkpoint']}@{(r.get('weights') or '?')[:8]}"
    return rows


def open_errors(db: str) -> List[Dict[str, Any]]:
    """Failures whose job has no row yet (latest error per key; a job also counts as done when a row has its
    checkpoint, text and parameters under another key: a checkpoint missing then, whose key now holds its digest)."""
    with SweepDB(db, readonly=True) as store:
        done = store.done_keys()
        latest = {e["key"]: e for e in store.errors()}
        ran = {(r["checkpoint"], r["text"], json.dumps(r["params"], sort_keys=True)) for r in store.rows()}

    def same_job_done(e) -> bool:
        with contextlib.suppress(TypeError, ValueError):
            return (e["checkpoint"], e["text"], json.dumps(json.loads(e["params"]), sort_keys=True)) in ran
        return False

    return [e for k, e in latest.items() if k not in done and not same_job_done(e)]


def _where(neurons: Sequence[Mapping], field: str) -> str:
    """'3:2 4:1' style counts of a neuron field (layer or kind), most common first."""
    c = Counter("-" if n.get(field) is None else n.get(field) for n in neurons)
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def flat_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    """One sweep row -> flat, CSV-friendly dict."""
    res = row["result"] or {}
    p = row["params"] or {}
    neurons = res.get("neurons", [])
    final = res.get("final_nll")
    out: Dict[str, Any] = {"key": row["key"], "checkpoint": row["checkpoint"], "model": row.get("model"),
                           "text": row["text"]}
    out.update({c: p.get(c) for c in PARAM_COLUMNS})
    out.update({
        "n_critical": row["n_critical"], "converged": bool(row["converged"]), "log10_ratio": row["log10_ratio"],
        "log10_clean_ppl": None if row.get("clean_nll") is None else row["clean_nll"] / LN10,
        "log10_final_ppl": None if final is None else final / LN10,
        "layers": _where(neurons, "layer"), "kinds": _where(neurons, "kind"),
        "neurons": ";".join(n["name"] for n in neurons),
        "k_used": (res.get("stats") or {}).get("k_used"),
        "seconds": row.get("seconds"), "device": row.get("device"), "finished_at": row.get("finished_at"),
        "achilles_fast": (row.get("versions") or {}).get("achilles_fast"),
        "torch": (row.get("versions") or {}).get("torch"),
    })
    return out


def ranker_of(row: Mapping[str, Any]) -> str:
    return (row.get("params") or {}).get("ranker", "sensitivity")


def summarize(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per (checkpoint, ranker): runs, converged runs, critical-set sizes, log10 ratios, where the neurons sit."""
    by: Dict[tuple, List[Mapping]] = {}
    for r in rows:
        by.setdefault((r["checkpoint"], ranker_of(r)), []).append(r)
    out = []
    for (ck, ranker), rs in by.items():
        conv = [r for r in rs if r["converged"]]
        sizes = [int(r["n_critical"]) for r in conv]
        ratios = [r["log10_ratio"] for r in conv if r["log10_ratio"] is not None]
        sets = [{n["name"] for n in (r["result"] or {}).get("neurons", [])} for r in conv]
        all_neurons = [n for r in conv for n in (r["result"] or {}).get("neurons", [])]
        out.append({
            "checkpoint": ck, "ranker": ranker, "runs": len(rs), "converged": len(conv),
            "n_critical_median": statistics.median(sizes) if sizes else None,
            "n_critical_min": min(sizes) if sizes else None, "n_critical_max": max(sizes) if sizes else None,
            "log10_ratio_median": statistics.median(ratios) if ratios else None,
            "distinct_neurons": len(set().union(*sets)) if sets else 0,
            "in_every_run": len(set.intersection(*sets)) if sets else 0,
            "layers": _where(all_neurons, "layer"), "kinds": _where(all_neurons, "kind"),
            "seconds": sum(r.get("seconds") or 0.0 for r in rs),
        })
    return out


@contextlib.contextmanager
def _text_out(path: str):
    """A text file for writing (written atomically when the block ends), or stdout for "-"."""
    if path == "-":
        yield sys.stdout
        return
    buf = io.StringIO(newline="")
    yield buf
    atomic_write(path, buf.getvalue())


def write_csv(records: Sequence[Mapping[str, Any]], path: str) -> None:
    """Flat records as CSV at ``path`` ("-": stdout)."""
    cols: List[str] = []
    for r in records:
        cols += [c for c in r if c not in cols]
    with _text_out(path) as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def write_runs_json(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Full rows (params, versions, timing and the whole result) plus the summary, as JSON at ``path``."""
    write_json({"summary": summarize(rows), "runs": list(rows)}, path)


def _column(values: List[Any]) -> List[Any]:
    """One table column with one type: numbers mixed with ints become floats, anything mixed with text becomes text
    (e.g. k = 100 and "auto")."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} and float in kinds:
        return [None if v is None else float(v) for v in values]
    if str in kinds and len(kinds) > 1:
        return [None if v is None else str(v) for v in values]
    return values


def require(module: str, what: str, pip: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs {pip.split()[0]}: pip install {pip} (or pip install 'achilles_fast[tables]')"
                          ) from None


def write_table(records: Sequence[Mapping[str, Any]], path: str, fmt: str) -> None:
    """Flat records as a table file: ``csv``, ``json`` (a list of records) or ``parquet`` (needs pyarrow); ``path``
"-" is stdout (csv, json)."""
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r}: expected one of {', '.join(TABLE_FORMATS)}")
    if fmt == "csv":
        return write_csv(records, path)
    if fmt == "json":
        if path == "-":
            print(json.dumps(list(records), indent=1, allow_nan=False))
        else:
            write_json(list(records), path, indent=1)
        return None
    pa = require("pyarrow", "--format parquet", "pyarrow")
    import pyarrow.parquet as pq
    cols: List[str] = []
    for r in records:
        cols += [c for c in r if c not in cols]
    table = pa.table({c: _column([r.get(c) for r in records]) for c in cols})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return None


def rows_dataframe(rows: Sequence[Mapping[str, Any]]):
    """Sweep rows as a pandas DataFrame of flat rows (one per run; needs pandas)."""
    pd = require("pandas", "rows_dataframe", "pandas")
    flat = [flat_row(r) for r in rows]
    cols: List[str] = []
    for r in flat:
        cols += [c for c in r if c not in cols]
    return pd.DataFrame({c: _column([r.get(c) for r in flat]) for c in cols})


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


SUMMARY_COLUMNS = (("checkpoint", "checkpoint"), ("ranker", "ranker"), ("runs", "runs"), ("converged", "conv"),
                   ("n_critical_median", "n median"), ("n_critical_min", "min"), ("n_critical_max", "max"),
                   ("log10_ratio_median", "log10 ratio"), ("distinct_neurons", "distinct"),
                   ("in_every_run", "in all"), ("layers", "layers (layer:count)"), ("kinds", "kinds"))
RUN_COLUMNS = (("checkpoint", "checkpoint"), ("text", "text"), ("ranker", "ranker"), ("epsilon", "eps"),
               ("n_critical", "n"), ("converged", "conv"), ("log10_ratio", "log10 ratio"),
               ("log10_clean_ppl", "log10 PPL"), ("layers", "layers"), ("seconds", "s"))


def table_text(records: Sequence[Mapping[str, Any]], columns, title: Optional[str] = None) -> str:
    """Plain fixed-width table."""
    heads = [h for _, h in columns]
    cells = [[_fmt(r.get(k)) for k, _ in columns] for r in records]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
