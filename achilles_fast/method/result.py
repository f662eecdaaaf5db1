"""The result of ``find_critical``: a JSON-serialisable dataclass with a human-readable summary."""
from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..utils import atomic_write


def versions() -> Dict[str, str]:
    import torch
    import transformers

    from ..version import __version__
    v = {"achilles_fast": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
         "python": platform.python_version()}
    try:
        import triton  # noqa: F401
        v["triton"] = triton.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        v["cuda"] = str(torch.version.cuda)
        v["gpu"] = torch.cuda.get_device_name()
    return v


@dataclasses.dataclass
class CriticalNeuron:
    name: str  # "<module>:<channel>"
    module: str
    channel: int
    layer: Optional[int]
    kind: str
    rank: int  # 0-based position in the sensitivity ranking
    score: float  # sensitivity score used for ranking


@dataclasses.dataclass
class CriticalResult:
    model: str
    neurons: List[CriticalNeuron]  # the critical set, in ranking order
    converged: bool
    epsilon: float
    clean_nll: float  # mean token NLL (natural log) of the unmasked model on the evaluation text
    final_nll: Optional[float]  # with the critical set masked (or the largest evaluated set if not converged)
    log10_ratio: Optional[float]  # log10(PPL_final / PPL_clean)
    curve: List[List[float]]  # [[n, log10 ratio], ...] every evaluated prefix size (phase-transition curve)
    params: Dict[str, Any]
    timings: Dict[str, float]  # seconds per stage
    stats: Dict[str, Any]  # forward passes, tokens, batch sizes, ...
    versions: Dict[str, str]
    top_ranked: List[CriticalNeuron] = dataclasses.field(default_factory=list)  # head of the ranking
    source: Dict[str, Any] = dataclasses.field(default_factory=dict)  # where the model came from (load_model)

    # -- derived ------------------------------------------------------------------------------------
    @property
    def names(self) -> List[str]:
        return [n.name for n in self.neurons]

    @property
    def clean_ppl(self) -> Optional[float]:
        return math.exp(self.clean_nll) if self.clean_nll < 700 else None

    @property
    def log10_clean_ppl(self) -> float:
        return self.clean_nll / math.log(10)

    @property
    def log10_final_ppl(self) -> Optional[float]:
        return None if self.final_nll is None else self.final_nll / math.log(10)

    # -- I/O ----------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["clean_ppl"] = self.clean_ppl
        d["log10_clean_ppl"] = self.log10_clean_ppl
        d["log10_final_ppl"] = self.log10_final_ppl
        d["n_critical"] = len(self.neurons)
        return d

    def to_json(self, path: Optional[str] = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            atomic_write(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CriticalResult":
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["neurons"] = [CriticalNeuron(**n) for n in d.get("neurons", [])]
        kw["top_ranked"] = [CriticalNeuron(**n) for n in d.get("top_ranked", [])]
        return cls(**kw)

    @classmethod
    def load(cls, path: str) -> "CriticalResult":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dataframe(self, table: str = "neurons"):
        """A pandas DataFrame (pandas is optional: ImportError naming it when absent).

        table: ``neurons`` (the critical set: name, module, channel, layer, kind, rank, score), ``top_ranked`` (the
        head of the ranking, same columns) or ``curve`` (n, log10_ratio). ``df.attrs`` holds the model, epsilon,
        log10_ratio, converged and source.
        """
        tables = ("neurons", "top_ranked", "curve")
        if table not in tables:
            raise ValueError(f"unknown table {table!r}: expected one of {', '.join(tables)}")
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("CriticalResult.to_dataframe needs pandas: pip install pandas") from None
        if table == "curve":
            df = pd.DataFrame([(int(n), float(r)) for n, r in self.curve], columns=["n", "log10_ratio"])
        else:
            cols = [f.name for f in dataclasses.fields(CriticalNeuron)]
            df = pd.DataFrame([dataclasses.astuple(n) for n in getattr(self, table)], columns=cols)
            df["layer"] = df["layer"].astype("Int64")  # None outside the layer stack
        df.attrs.update(model=self.model, epsilon=self.epsilon, log10_ratio=self.log10_ratio,
                        converged=self.converged, source=dict(self.source))
        return df

    # -- display ------------------------------------------------------------------------------------
    def summary(self) -> str:
        lines = [
            f"model            {self.model}",
            f"critical set     {len(self.neurons)} neuron(s){'' if self.converged else ' (NOT converged)'}",
            f"clean PPL        {fmt_ppl(self.clean_nll)}",
            f"masked PPL       {fmt_ppl(self.final_nll)}",
            f"log10 PPL ratio  {_fmt(self.log10_ratio)}  (epsilon {self.epsilon})",
            "time             " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]
        if self.stage1_note():
            lines.insert(-1, f"Stage 1 dtype    {self.stage1_note()}")
        if self.neurons:
            lines.append("")
            lines.append(f"{'#':>4}  {'neuron':<44} {'layer':>5}  {'kind':<16} {'score':>10}")
            for i, n in enumerate(self.neurons):
                lines.append(f"{i + 1:>4}  {n.name:<44} {'' if n.layer is None else n.layer:>5}  {n.kind:<16} "
                             f"{n.score:>10.4g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def stage1_note(self) -> Optional[str]:
        """One line on a low-precision Stage 1 (``stage1_dtype``): certified or ranked again; None when off."""
        c = self.stats.get("stage1_certified")
        if not c:
            return None
        if c.get("certified"):
            return (f"{c['dtype']}, certified (the first {c['length']} channel(s) apart by > 2 x margin "
                    f"{c['margin']:.3g})")
        if "fallback" in c:
            return f"{c['dtype']} not certified ({c['fallback']}): ranked again in the model's dtype"
        return f"{c['dtype']} ranking kept, not certified ({c.get('reason')})"


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def fmt_ppl(nll: Optional[float]) -> str:
    if nll is None:
        return "n/a"
    l10 = nll / math.log(10)
    return f"{math.exp(nll):.4g}" if l10 < 6 else f"1e{l10:.2f}"


def read_neurons(spec: str, what: str = "--neurons") -> Tuple[List[str], Dict[str, Any]]:
    """A neuron set as the CLI's ``--neurons`` takes it: a result JSON file (``find --out`` / ``to_json``, or a plain
    JSON list of names) or comma-separated names -> (names, the result's params, {} when none). A folder, a missing
    file, bad JSON or no names: one-line ValueError / FileNotFoundError whose message starts with ``what``."""
    if not spec.strip():
        raise ValueError(f"{what} is empty")
    p = Path(spec).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {spec} is a folder; give a result JSON file or neuron names")
    if p.is_file():
        return _neurons_from_json(p, what)
    if spec.strip().lower().endswith(".json") or "/" in spec or "\\" in spec:  # a path, not neuron names
        raise FileNotFoundError(f"{what} {spec}: no such file")
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"{what} is empty")
    return names, {}


def _neurons_from_json(path: Path, what: str):
    """A result JSON ({"neurons": [{"name": ...} | "name", ...], "params": ...}) or a JSON list of names."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path}: not a JSON file ({e})") from None
    params = {}
    if isinstance(d, dict):
        if "neurons" not in d:
            raise ValueError(f"{what} {path}: no 'neurons' key (keys: {', '.join(map(str, d)) or 'none'}); "
                             "expected a result JSON from `find --out`")
        params = d.get("params") if isinstance(d.get("params"), dict) else {}
        d = d["neurons"]
    if not isinstance(d, list):
        raise ValueError(f"{what} {path}: the neurons must be a JSON list of names, got {type(d).__name__} {d!r:.60}")
    names = []
    for item in d:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise ValueError(f"{what} {path}: each neuron must be a name like 'model.layers.0.mlp.down_proj:5' "
                             f"or an object with a 'name', got {item!r:.60}")
        names.append(name)
    return names, params
