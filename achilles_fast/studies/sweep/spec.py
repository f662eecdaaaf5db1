"""Sweeps: checkpoints x texts x parameter grids, streamed into a SQLite database, locally or on Ray.

Spec (YAML or a dict)::

    db: sweep.db                       # optional; the CLI's --db wins
    checkpoints:                       # local HF folders, .gguf files, named defaults
      - /data/stories260K
      - smollm2-135m
      - {name: tiny, path: ./tiny, dtype: float32, device: auto}
    texts:                             # default: the built-in passage
      - default
      - {name: wiki, file: wiki.txt}
      - {name: hello, text: "Once upon a time ..."}
    params: {max_tokens: 128, k: 20}   # fixed find_critical parameters
    grid: {epsilon: [0.5, 1.0], ranker: [sensitivity, random]}   # every combination
    ray: {num_gpus: 1, num_cpus: 1, retries: 2}

Parameters are the fields of ``FindConfig`` (``ranker`` picks the sensitivity method or a baseline). Every job
has a key (hash of checkpoint label, text hash and the non-default parameters). A run skips keys
already in the database, so re-running the same command resumes a killed sweep. Locally the jobs of one
checkpoint run in this process; with Ray each checkpoint is one task (a streaming generator) running the very
same ``run_checkpoint`` generator, and the driver writes the rows it yields.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ...method.config import FindConfig


def _now(precise: bool = False) -> str:
    """UTC time, ISO 8601 (``precise``: microseconds, for ordering errors against a worker's start)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")


@dataclasses.dataclass
class Checkpoint:
    name: str
    path: str
    dtype: str = "float32"
    device: str = "auto"

    @classmethod
    def parse(cls, item: Union[str, Dict[str, Any]], base: Optional[Path] = None) -> "Checkpoint":
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise ValueError(f"checkpoint entry {item!r}: expected a path string or a mapping with 'path'")
        unknown = set(item) - {"name", "path", "dtype", "device"}
        if unknown:
            raise ValueError(f"checkpoint entry {item!r}: unknown keys {sorted(unknown)}")
        path = str(item["path"])
        p = Path(path).expanduser()
        if base is not None and not p.is_absolute() and (base / p).exists():
            path = str((base / p).resolve())
        name = item.get("name") or _default_name(path)
        return cls(name=str(name), path=path, dtype=str(item.get("dtype", "float32")),
                   device=str(item.get("device", "auto")))


def _default_name(path: str) -> str:
    """Label of a checkpoint without a 'name': the folder/file name of a path, else the spec (named models).

    It does not depend on whether the path exists, so a job's key is the same before and after it appears.
    A hub id (``org/name[@revision][/file.gguf]`` that is not a local path, as load_model decides) is its own label.
    """
    from ...models.hub import looks_like_hub_id
    if looks_like_hub_id(path) and not Path(path).expanduser().exists():
        return path
    looks_like_path = "/" in path or os.sep in path or path.endswith(".gguf") or Path(path).expanduser().exists()
    return Path(path.rstrip("/")).name if looks_like_path else path


@dataclasses.dataclass
class TextItem:
    name: str
    text: Optional[str]  # None: the built-in default passage

    @property
    def sha(self) -> str:
        return hashlib.sha256((self.text if self.text is not None else "\0default").encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, item: Union[str, Dict[str, Any]], base: Optional[Path] = None) -> "TextItem":
        if item == "default" or item is None:
            return cls("default", None)
        if isinstance(item, str):
            item = {"file": item}
        if "text" in item:
            return cls(str(item.get("name") or "text"), str(item["text"]))
        if "file" in item:
            p = Path(item["file"]).expanduser()
            if base is not None and not p.is_absolute():
                p = base / p
            return cls(str(item.get("name") or p.stem), p.read_text(encoding="utf-8"))
        raise ValueError(f"text entry {item!r}: expected 'default', a file path, or a mapping with 'text' or 'file'")


@dataclasses.dataclass
class Job:
    checkpoint: str
    text: str
    text_sha: str
    params: Dict[str, Any]  # full (defaults filled in); recorded in the row
    key: str  # see job_key
    text_body: Optional[str] = dataclasses.field(default=None, repr=False)
    weights: Optional[str] = None  # the checkpoint's content digest (models.loading.weights_digest) when planned


def job_key(checkpoint: str, text_sha: str, params: Dict[str, Any], defaults: Dict[str, Any],
            weights: Optional[str] = None) -> str:
    """Hash of checkpoint label, its weights' content digest (when known: a checkpoint changed in place is a new
    job), text hash and the parameters that differ from their defaults.

    Leaving defaults out makes "k: 100" written out the same job as k omitted, and keeps the keys of an existing
    database valid when a later version adds a parameter (with a default) to find_critical.
    """
    own = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    key = {"checkpoint": checkpoint, "text_sha": text_sha, "params": own}
    if weights is not None:
        key["weights"] = weights
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclasses.dataclass
class SweepSpec:
    checkpoints: List[Checkpoint]
    texts: List[TextItem]
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: Dict[str, List[Any]] = dataclasses.field(default_factory=dict)
    db: Optional[str] = None
    ray: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], base: Optional[Path] = None) -> "SweepSpec":
        if not isinstance(d, dict):
            raise ValueError(f"sweep spec: expected a mapping (checkpoints, texts, params, grid, ...), got "
                             f"{type(d).__name__}")
        unknown = set(d) - {"checkpoints", "texts", "params", "grid", "db", "ray"}
        if unknown:
            raise ValueError(f"sweep spec: unknown top-level keys {sorted(unknown)}")
        if not d.get("checkpoints"):
            raise ValueError("sweep spec: 'checkpoints' must list at least one checkpoint")
        cks = [Checkpoint.parse(c, base) for c in d["checkpoints"]]
        names = [c.name for c in cks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"sweep spec: duplicate checkpoint names {sorted(dup)}; give each a 'name'")
        texts = [TextItem.parse(t, base) for t in (d.get("texts") or ["default"])]
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in (d.get("grid") or {}).items()}
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise ValueError(f"sweep spec: grid {', '.join(map(repr, empty))} lists no values (the sweep would be "
                             f"empty)")
        db = d.get("db")
        if db and base is not None and not Path(db).is_absolute():
            db = str(base / db)
        spec = cls(cks, texts, dict(d.get("params") or {}), grid, db, dict(d.get("ray") or {}))
        spec.jobs()  # validate parameter names now
        return spec

    @classmethod
    def load(cls, path: str) -> "SweepSpec":
        import yaml
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"sweep spec {path} is a folder, not a YAML file")
        try:
            with open(p, encoding="utf-8") as f:
                d = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"sweep spec {path}: YAML syntax error{where}: {what}") from None
        except UnicodeDecodeError:
            raise ValueError(f"sweep spec {path}: not UTF-8 text") from None
        except PermissionError:
            raise ValueError(f"sweep spec {path}: cannot read it (permission denied)") from None
        return cls.from_dict(d, base=p.resolve().parent)

    def to_dict(self) -> Dict[str, Any]:
        """A dict that ``from_dict`` turns back into this spec (paths resolved, texts inline): what worker
        processes receive."""
        texts = ["default" if t.text is None else {"name": t.name, "text": t.text} for t in self.texts]
        return {"checkpoints": [dataclasses.asdict(c) for c in self.checkpoints], "texts": texts,
                "params": dict(self.params), "grid": dict(self.grid), "db": self.db, "ray": dict(self.ray)}

    def param_sets(self) -> List[Dict[str, Any]]:
        defaults = self.defaults()
        allowed = set(defaults)
        for k in list(self.params) + list(self.grid):
            if k not in allowed:
                raise ValueError(f"sweep spec: unknown parameter {k!r}; allowed: {', '.join(sorted(allowed))}")
        keys = list(self.grid)
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            p = dict(defaults)
            p.update(self.params)
            p.update(dict(zip(keys, combo)))
            try:
                FindConfig(**p)  # validate now; the row keeps the values as written (they make the job keys)
            except ValueError as e:
                raise ValueError(f"sweep spec: {e}") from None
            out.append(p)
        return out

    @staticmethod
    def defaults() -> Dict[str, Any]:
        return FindConfig.defaults()

    def inputs(self) -> list:
        """What the sweep reads (each checkpoint's folder and files, GGUF conversion caches) for
        ``utils.check_not_input``: the database must be none of them."""
        from ...models.loading import model_inputs
        return [x for c in self.checkpoints for x in model_inputs(c.path)]

    def jobs(self) -> List[Job]:
        from ...models.loading import spec_digest
        sets, d = self.param_sets(), self.defaults()
        digests = {c.name: spec_digest(c.path) for c in self.checkpoints}  # each file hashed once, remembered
        return [Job(c.name, t.name, t.sha, p, job_key(c.name, t.sha, p, d, digests[c.name]), t.text,
                    digests[c.name])
                for c in self.checkpoints for t in self.texts for p in sets]


