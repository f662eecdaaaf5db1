"""The sweep's sink: what the units yield, written to the database (rows, errors, rankings), with progress lines."""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable, Dict

from ...utils import fallback_path
from .db import SweepDB, SweepDBError
from .spec import _now


class _Sink:
    """Writes what the units yield to the database (rows, errors, rankings) and reports progress."""

    def __init__(self, db: SweepDB, total: int, done: int, log: Callable[[str], None]):
        self.db, self.total, self.done, self.log = db, total, done, log
        self.written = self.failed = self.rankings = 0

    def __call__(self, item: Dict[str, Any]) -> None:
        try:
            self._store(item)
        except sqlite3.OperationalError as e:  # disk full, I/O error: committed rows stay, this one is kept aside
            raise self._lost(item, e) from None

    def _lost(self, item: Dict[str, Any], e: Exception) -> SweepDBError:
        """The row (or error) the database could not take, written to a JSON-lines file in the temp folder; the
        one-line error saying what is where."""
        where = f"{self.written} row(s) of this run are in {self.db.path}"
        if "ranking_key" in item:  # a Stage 1 ranking: recomputed by the rerun
            return SweepDBError(f"{self.db.path}: {e}; {where}; free space and rerun the sweep to resume")
        path = fallback_path(f"{os.path.basename(self.db.path)}.jsonl")
        try:
            with open(path, "a") as f:
                f.write(json.dumps(item, default=str) + "\n")
            kept = f"the row being written is saved to {path}"
        except OSError as e2:
            kept = f"the row being written could not be saved anywhere ({e2.strerror or e2})"
        return SweepDBError(f"{self.db.path}: {e}; {where}; {kept}; free space and rerun the sweep to resume")

    def _store(self, item: Dict[str, Any]) -> None:
        if "ranking_key" in item:
            self.db.put_ranking(item)
            self.rankings += 1
            return
        if "error" not in item:
            try:
                inserted = self.db.insert(item)
            except (ValueError, TypeError) as e:  # e.g. NaN in the result: an error row, the sweep goes on
                item = {**item, "error": f"{type(e).__name__}: cannot store the result: {e}"}
        if "error" in item:
            self.failed += 1
            self.db.record_error(item["key"], item["checkpoint"], item["text"], item["params"], item["error"],
                                 _now(precise=True))
            self.log(f"FAILED {item['checkpoint']} / {item['text']}: {item['error']}")
            return
        if inserted:
            self.written += 1
            self.done += 1
        lr = item["log10_ratio"]
        self.log(f"[{self.done}/{self.total}] {item['checkpoint']} / {item['text']} / "
                 f"{_short_params(item['params'])}: {item['n_critical']} neuron(s)"
                 f"{'' if item['converged'] else ' (not converged)'}, log10 ratio "
                 f"{'n/a' if lr is None else f'{lr:.3f}'} ({item['seconds']:.1f}s)")


def _short_params(p: Dict[str, Any]) -> str:
    keys = ("ranker", "epsilon", "k", "alpha", "seed", "max_neurons", "scope", "max_tokens")
    return " ".join(f"{k}={p[k]}" for k in keys if k in p)
