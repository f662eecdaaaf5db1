"""The sweep database: an embedded SQLite file (WAL) with one row per (checkpoint, text, params) key.

Rows are committed one at a time, and ``key`` is UNIQUE with ``INSERT OR IGNORE``, so a run killed at any point
(even mid-write) and resumed ends with every job exactly once. Failed jobs go to ``errors`` and are retried by the
next run.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, Iterable, List, Optional, Set

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    checkpoint TEXT NOT NULL,
    checkpoint_path TEXT,
    model TEXT,
    text TEXT NOT NULL,
    text_sha TEXT NOT NULL,
    params TEXT NOT NULL,
    n_critical INTEGER,
    converged INTEGER,
    log10_ratio REAL,
    clean_nll REAL,
    epsilon REAL,
    seconds REAL,
    load_seconds REAL,
    started_at TEXT,
    finished_at TEXT,
    host TEXT,
    pid INTEGER,
    device TEXT,
    versions TEXT,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    checkpoint TEXT,
    text TEXT,
    params TEXT,
    error TEXT,
    at TEXT
);
"""

ROW_COLUMNS = ("key", "checkpoint", "checkpoint_path", "model", "text", "text_sha", "params", "n_critical",
               "converged", "log10_ratio", "clean_nll", "epsilon", "seconds", "load_seconds", "started_at",
               "finished_at", "host", "pid", "device", "versions", "result")


class SweepDB:
    """Thin wrapper over the sweep's SQLite file (safe to open from several processes on one host)."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- writes -------------------------------------------------------------------------------------
    def insert(self, row: Dict[str, Any]) -> bool:
        """Insert one finished job; False when its key is already there (idempotent)."""
        vals = [_sql(row.get(c)) for c in ROW_COLUMNS]
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO runs ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})",
            vals)
        return cur.rowcount == 1

    def record_error(self, key: str, checkpoint: str, text: str, params: Dict[str, Any], error: str,
                     at: str) -> None:
        self.conn.execute("INSERT INTO errors (key, checkpoint, text, params, error, at) VALUES (?, ?, ?, ?, ?, ?)",
                          (key, checkpoint, text, json.dumps(params, sort_keys=True), error, at))

    # -- reads --------------------------------------------------------------------------------------
    def done_keys(self, keys: Optional[Iterable[str]] = None) -> Set[str]:
        got = {r[0] for r in self.conn.execute("SELECT key FROM runs")}
        return got if keys is None else got & set(keys)

    def rows(self) -> List[Dict[str, Any]]:
        """All finished rows, in insertion order, with params/versions/result parsed from JSON."""
        cur = self.conn.execute(f"SELECT id, {', '.join(ROW_COLUMNS)} FROM runs ORDER BY id")
        names = [d[0] for d in cur.description]
        out = []
        for r in cur:
            d = dict(zip(names, r))
            for c in ("params", "versions", "result"):
                d[c] = json.loads(d[c]) if d[c] else None
            d["converged"] = bool(d["converged"])
            out.append(d)
        return out

    def errors(self) -> List[Dict[str, Any]]:
        cur = self.conn.execute("SELECT key, checkpoint, text, params, error, at FROM errors ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def _sql(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, allow_nan=False)
    if isinstance(v, bool):
        return int(v)
    return v
