"""The sweep database: an embedded SQLite file (WAL) with one row per (checkpoint, text, params) key.

Rows are committed one at a time, and ``key`` is UNIQUE with ``INSERT OR IGNORE``, so a run killed at any point
(even mid-write) and resumed ends with every job exactly once. Failed jobs go to ``errors`` and are retried by the
next run.

Schema 2 adds ``rankings`` (Stage 1 results, content-addressed: a re-run with new Stage 2 parameters reuses them)
and ``leases`` (a worker claims a unit of jobs with a row holding its id and a heartbeat; a stale lease, whose
heartbeat is older than the TTL or whose process on this host is gone, is taken over), so several workers,
local or on Ray, split one database's work. ``PRAGMA user_version`` holds the schema version: a database of the
previous schema (1: no version, runs + errors) is migrated in place (its rows are valid as they are); one of a
newer version, an SQLite file of another program, or a file that is not SQLite is refused with one line and left
unchanged. Schema 3 adds the ``weights`` column: the checkpoint's content digest (rows of older schemas have none).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set
from urllib.parse import quote

from ...utils import check_writable, pid_alive

SCHEMA_VERSION = 3

TABLES = {
    "runs": """CREATE TABLE IF NOT EXISTS runs (
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
    result TEXT NOT NULL,
    weights TEXT
)""",
    "errors": """CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    checkpoint TEXT,
    text TEXT,
    params TEXT,
    error TEXT,
    at TEXT
)""",
    "rankings": """CREATE TABLE IF NOT EXISTS rankings (
    key TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    checkpoint TEXT,
    n INTEGER NOT NULL,
    targets TEXT NOT NULL,
    channels BLOB NOT NULL,
    scores BLOB NOT NULL,
    info TEXT,
    created_at TEXT
)""",
    "leases": """CREATE TABLE IF NOT EXISTS leases (
    unit TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    host TEXT,
    pid INTEGER,
    heartbeat REAL NOT NULL,
    claimed_at REAL NOT NULL
)""",
}
INDEXES = ("CREATE INDEX IF NOT EXISTS rankings_unit ON rankings (unit)",
           "CREATE INDEX IF NOT EXISTS errors_key ON errors (key)")

ROW_COLUMNS = ("key", "checkpoint", "checkpoint_path", "model", "text", "text_sha", "params", "n_critical",
               "converged", "log10_ratio", "clean_nll", "epsilon", "seconds", "load_seconds", "started_at",
               "finished_at", "host", "pid", "device", "versions", "result", "weights")
ADDED_COLUMNS = {"weights": "ALTER TABLE runs ADD COLUMN weights TEXT"}  # schema 3: the checkpoint's digest
RANKING_COLUMNS = ("key", "unit", "checkpoint", "n", "targets", "channels", "scores", "info", "created_at")
LEASE_TTL = 120.0  # seconds without a heartbeat after which another worker takes a lease over


class SweepDBError(ValueError):
    """A --db that cannot be used: not SQLite, not a sweep database, a newer schema, not writable (exit 2)."""


def check_db_path(path: str, write: bool = True) -> bool:
    """Refuse, in one line, a path that cannot be a sweep database; True when the file exists.

    Never opens the file itself (SQLite does: ``SweepDB``): closing any descriptor of a database file drops every
    POSIX lock this process holds on it, including those of its open SQLite connections."""
    p = Path(path)
    if p.is_dir():
        raise SweepDBError(f"{path} is a folder, not a sweep database file")
    if p.exists() and not os.access(p, os.R_OK):
        raise SweepDBError(f"{path} is not readable")
    if write:  # the file and its folder (SQLite writes its journal beside the database)
        check_writable(p, error=SweepDBError)
    elif not p.exists():
        raise FileNotFoundError(f"{path}: no such sweep database")
    return p.exists()


def validate_db(path: str) -> None:
    """Check an existing file is a sweep database this version can use (read-only; changes nothing)."""
    if Path(path).exists():
        SweepDB(path, readonly=True).close()


def _one(conn: sqlite3.Connection, sql: str, args: tuple = ()) -> Optional[tuple]:
    """The first row of a query, the statement finished: an unfinished one (``fetchone``) keeps its transaction
    open, so in autocommit mode every later write would stay uncommitted until it is reset."""
    rows = conn.execute(sql, args).fetchall()
    return rows[0] if rows else None


def _columns(conn: sqlite3.Connection, table: str) -> Set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _check_schema(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version (0: empty); refuses other programs' databases and newer schemas."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    tables.discard("sqlite_sequence")
    version = int(_one(conn, "PRAGMA user_version")[0])
    if version > SCHEMA_VERSION:
        raise SweepDBError(f"{path} was written by a newer achilles_fast (sweep schema {version}; this version "
                           f"reads up to {SCHEMA_VERSION}): upgrade achilles_fast or use another --db")
    if not tables:
        return 0
    if "runs" not in tables or not set(ROW_COLUMNS) - set(ADDED_COLUMNS) <= _columns(conn, "runs"):
        raise SweepDBError(f"{path} is an SQLite database but not a sweep database (tables: "
                           f"{', '.join(sorted(tables))})")
    return max(version, 1)


class SweepDB:
    """Thin wrapper over the sweep's SQLite file (safe to open from several processes on one host).

    ``readonly``: open without creating, migrating or writing anything (reports, dry runs)."""

    def __init__(self, path: str, timeout: float = 60.0, readonly: bool = False):
        self.path = str(path)
        self.readonly = readonly
        self.migrated_from: Optional[int] = None
        check_db_path(self.path, write=not readonly)
        if readonly:
            self.conn = sqlite3.connect(f"file:{quote(os.path.abspath(self.path))}?mode=ro", uri=True,
                                        timeout=timeout, isolation_level=None)
        else:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.timeout = timeout
        try:
            self.version = _check_schema(self.conn, self.path)
            if not readonly:
                self._create_or_migrate()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if "not a database" in str(e):
                raise SweepDBError(f"{self.path} is not an SQLite database (a sweep database is the SQLite file that "
                                   f"`achilles-fast sweep` writes)") from None
            raise SweepDBError(f"{self.path}: {e}") from None
        except BaseException:
            self.conn.close()
            raise

    def _enable_wal(self) -> None:
        """Switch the file to WAL, retrying for up to ``timeout`` s: two processes opening a new file at once both
        hold a shared lock and want an exclusive one, and SQLite answers one of them "database is locked" at once
        (deadlock avoidance: no busy wait), which the timeout does not cover (16 of 60 racing pairs here)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                _one(self.conn, "PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _create_or_migrate(self) -> None:
        self._enable_wal()
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.transaction():
            version = _check_schema(self.conn, self.path)  # again, inside the write lock
            if version < SCHEMA_VERSION:
                for ddl in list(TABLES.values()) + list(INDEXES):
                    self.conn.execute(ddl)
                have = _columns(self.conn, "runs")
                for col, ddl in ADDED_COLUMNS.items():
                    if col not in have:
                        self.conn.execute(ddl)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                if version:
                    self.migrated_from = version
        self.version = SCHEMA_VERSION

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time across processes."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _has(self, table: str) -> bool:
        return _one(self.conn, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)) is not None

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

    def put_ranking(self, rec: Dict[str, Any]) -> None:
        """Store a ranking record (see ``plan.ranking_record``); a longer one replaces a shorter one."""
        vals = [_sql(rec.get(c)) if c not in ("channels", "scores") else rec[c] for c in RANKING_COLUMNS]
        self.conn.execute(
            f"INSERT INTO rankings ({', '.join(RANKING_COLUMNS)}) VALUES ({', '.join('?' * len(RANKING_COLUMNS))}) "
            f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in RANKING_COLUMNS[1:])} "
            f"WHERE excluded.n > rankings.n", vals)

    # -- leases -------------------------------------------------------------------------------------
    def claim(self, unit: str, worker: str, ttl: float = LEASE_TTL) -> bool:
        """Take the lease of ``unit`` for ``worker`` unless a live worker holds it (a stale lease is taken over)."""
        now = time.time()
        host = socket.gethostname()
        with self.transaction():
            r = _one(self.conn, "SELECT worker, host, pid, heartbeat FROM leases WHERE unit=?", (unit,))
            if r is not None and r[0] != worker and not _stale(r, now, ttl, host):
                return False
            self.conn.execute("INSERT OR REPLACE INTO leases (unit, worker, host, pid, heartbeat, claimed_at) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (unit, worker, host, os.getpid(), now, now))
        return True

    def release(self, unit: str, worker: str) -> None:
        self.conn.execute("DELETE FROM leases WHERE unit=? AND worker=?", (unit, worker))

    def release_all(self, worker: str) -> None:
        self.conn.execute("DELETE FROM leases WHERE worker=?", (worker,))

    def heartbeat(self, worker: str) -> None:
        self.conn.execute("UPDATE leases SET heartbeat=? WHERE worker=?", (time.time(), worker))

    def leases(self) -> List[Dict[str, Any]]:
        if not self._has("leases"):
            return []
        cur = self.conn.execute("SELECT unit, worker, host, pid, heartbeat, claimed_at FROM leases")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    # -- reads --------------------------------------------------------------------------------------
    def done_keys(self, keys: Optional[Iterable[str]] = None) -> Set[str]:
        if not self._has("runs"):  # an empty SQLite file opened read-only: nothing done yet
            return set()
        got = {r[0] for r in self.conn.execute("SELECT key FROM runs")}
        return got if keys is None else got & set(keys)

    def error_keys_since(self, at: str) -> Set[str]:
        """Keys with an error recorded at or after ``at`` (ISO time, as ``record_error`` writes it)."""
        return {r[0] for r in self.conn.execute("SELECT key FROM errors WHERE at >= ?", (at,))}

    def rankings(self, units: Iterable[str]) -> Dict[str, Dict[str, Any]]:
        """Stored ranking records of these units, by content key."""
        units = list(units)
        if not units or not self._has("rankings"):
            return {}
        cur = self.conn.execute(f"SELECT {', '.join(RANKING_COLUMNS)} FROM rankings WHERE unit IN "
                                f"({', '.join('?' * len(units))})", units)
        out = {}
        for r in cur:
            d = dict(zip(RANKING_COLUMNS, r))
            d["targets"] = json.loads(d["targets"])
            d["info"] = json.loads(d["info"]) if d["info"] else {}
            out[d["key"]] = d
        return out

    def rows(self) -> List[Dict[str, Any]]:
        """All finished rows, in insertion order, with params/versions/result parsed from JSON."""
        if not self._has("runs"):
            return []
        have = _columns(self.conn, "runs")  # a database of an older schema opened read-only lacks added columns
        cols = ", ".join(c if c in have else f"NULL AS {c}" for c in ROW_COLUMNS)
        cur = self.conn.execute(f"SELECT id, {cols} FROM runs ORDER BY id")
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
        if not self._has("errors"):
            return []
        cur = self.conn.execute("SELECT key, checkpoint, text, params, error, at FROM errors ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def count(self) -> int:
        if not self._has("runs"):
            return 0
        return int(_one(self.conn, "SELECT COUNT(*) FROM runs")[0])


def _stale(lease, now: float, ttl: float, host: str) -> bool:
    """A lease (worker, host, pid, heartbeat) is stale when its heartbeat is older than ``ttl`` or its process, on
    this host, is gone."""
    _, lhost, pid, beat = lease
    if now - float(beat) > ttl:
        return True
    return lhost == host and pid is not None and int(pid) != os.getpid() and not pid_alive(int(pid))


def _sql(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, allow_nan=False)
    if isinstance(v, bool):
        return int(v)
    return v
