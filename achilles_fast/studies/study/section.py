"""The study's extension point: a ``Section`` declares its claim, its parameters and its Stage 1 needs, runs on the
shared ``StudyContext`` and renders its figures; ``REGISTRY`` / ``SECTIONS`` are filled by the section modules in
``sections/`` (every module there is imported), so adding a section is one module (+ its test).

A section's parameters (``Param``: name, default, ``--quick`` value, validation, optional CLI flag) are declared once,
on the section; ``StudyParams`` (params.py), the CLI flags and the section's cache key derive from them.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .context import StudyContext

HOLDS, FAILS, NA = "holds", "does not hold", "not applicable"
_MISSING = object()


class StudyError(ValueError):
    """Bad study input (unknown section, invalid grid value, ...): one line, exit 2 in the CLI."""


# ---- parameters ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    """One study parameter, declared on the section that uses it.

    default / quick: the full and the ``--quick`` preset's value (quick defaults to ``default``); ``check(value)``
    raises StudyError (one line) when the value is bad; ``flag`` (e.g. ``--alphas``) puts it on the CLI, parsed by
    ``kind``: a comma-separated grid of float / int / str (tuple values), a single int, or a repeatable str
    (``append=True``); params without a flag are Python-only (``study(..., name=value)``).
    """
    name: str
    default: Any
    help: str = ""
    quick: Any = _MISSING
    check: Optional[Callable[[Any], None]] = None
    flag: Optional[str] = None
    kind: Callable = str
    append: bool = False

    @property
    def quick_value(self) -> Any:
        return self.default if self.quick is _MISSING else self.quick

    @property
    def is_grid(self) -> bool:
        return isinstance(self.default, tuple) and not self.append

    def validate(self, value: Any) -> None:
        if self.check is not None:
            self.check(value)

    # -- CLI ---------------------------------------------------------------------------------------------------------
    def add_argument(self, group) -> None:
        """``flag`` on an argparse group (None: the preset's value)."""
        if self.append:
            group.add_argument(self.flag, dest=self.name, action="append", default=None, help=self.help,
                               metavar=self.flag.lstrip("-").replace("-", "_").upper())
        elif self.is_grid:
            group.add_argument(self.flag, dest=self.name, default=None, help=self.help)
        else:
            group.add_argument(self.flag, dest=self.name, type=self.kind, default=None, help=self.help)

    def from_args(self, args) -> Any:
        v = getattr(args, self.name, None)
        return parse_grid(v, self.kind, self.flag) if self.is_grid else v


def parse_grid(spec: Optional[str], kind, flag: str) -> Optional[Tuple]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0) with ``kind`` (float, int or str); None stays None."""
    if spec is None:
        return None
    out = []
    for s in spec.split(","):
        s = s.strip()
        if not s:
            continue
        try:
            v = kind(s)
        except ValueError:
            raise StudyError(f"invalid {flag} value {s!r}: expected {kind.__name__} values separated by commas") \
                from None
        if isinstance(v, float) and not math.isfinite(v):
            raise StudyError(f"invalid {flag} value {s!r}: must be finite")
        out.append(v)
    if not out:
        raise StudyError(f"{flag} is empty")
    return tuple(dict.fromkeys(out))


# validation helpers for Param.check
def positive_int(name: str, most: Optional[int] = None, why: str = "") -> Callable[[Any], None]:
    """check: an integer >= 1 (and <= ``most``)."""
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise StudyError(f"{name} must be an integer >= 1, got {v!r}")
        if most is not None and v > most:
            raise StudyError(f"{name} must be <= {most}{why}, got {v}")
    return check


def grid_of(name: str, make: Callable[[Any], Any]) -> Callable[[Any], None]:
    """check: a non-empty grid whose every value passes ``make(value)`` (e.g. building the FindConfig it stands for,
    so the messages are the method's own)."""
    def check(values):
        if not values:
            raise StudyError(f"the {name} grid is empty")
        for v in values:
            try:
                make(v)
            except (ValueError, TypeError) as e:
                raise StudyError(f"invalid {name} value: {e}") from None
    return check


# ---- report pieces -----------------------------------------------------------------------------------------------
def verdict(claim: str, ok: Optional[bool], detail: str) -> Dict[str, str]:
    """One verdict line: ``ok`` True -> holds, False -> does not hold, None -> not applicable."""
    return {"claim": claim, "verdict": NA if ok is None else HOLDS if ok else FAILS, "detail": detail}


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Dict[str, Any]:
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}


def figure(stem: str, caption: str) -> Dict[str, str]:
    """A figure's entry in the report (the image itself comes from ``Section.figures(data)``)."""
    return {"stem": stem, "caption": caption}


def fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"


class Stage1(NamedTuple):
    """What a section needs from the shared Stage 1 pass besides the default set's scores."""
    ks: Tuple[int, ...] = ()  # scores at these K as well (prefix means of the one pass)
    all_targets: bool = False  # scores over the scope='all' targets as well


# ---- the interface -----------------------------------------------------------------------------------------------
class Section:
    """One section of the study. Subclass, set the class attributes, implement ``run`` (and ``figures`` when the
    block lists figures), decorate with ``@register``.

    name: id (``--sections``, cache, HTML anchor); title; claim: the paper's claim, as the report states it;
    order: place in the report (sections sorted by it); params: its ``Param``s.
    """
    name: str = ""
    title: str = ""
    claim: str = ""
    order: float = 0.0
    params: Tuple[Param, ...] = ()

    def stage1(self, p) -> Optional[Stage1]:
        """Scores this section reads from the shared Stage 1 pass (``ctx.ranking(...)``) beyond the default set's;
        None: none. The runner makes one pass covering every section to run."""
        return None

    def key_params(self, ctx: "StudyContext") -> Dict[str, Any]:
        """What the section's numbers depend on besides the model, texts and method (part of its cache key):
        by default its own parameters' values."""
        return {q.name: list(v) if isinstance(v, tuple) else v
                for q in self.params for v in [getattr(ctx.params, q.name)]}

    def run(self, ctx: "StudyContext", p) -> Dict[str, Any]:
        """Measure on ``ctx`` with the study parameters ``p`` -> ``self.block(...)``: the text, verdicts, tables,
        figure entries and every number (``data``, JSON-able)."""
        raise NotImplementedError

    def figures(self, data: Dict[str, Any]) -> List[Tuple[str, "Figure"]]:
        """(stem, matplotlib Figure) for each figure entry of the block, from its ``data`` alone (a cached section
        is re-rendered from study.json)."""
        return []

    def block(self, measured: Sequence[str], verdicts: Sequence[Dict], *, tables: Sequence[Dict] = (),
              figures: Sequence[Dict] = (), data: Optional[Dict] = None) -> Dict[str, Any]:
        """The section's report block: the paper's claim, what was measured, verdict lines (``verdict``), tables
        (``table``), figure entries (``figure``; the runner saves the images) and every number (``data``)."""
        return {"name": self.name, "title": self.title, "claim": self.claim, "measured": list(measured),
                "verdicts": list(verdicts), "tables": list(tables), "figures": list(figures), "data": data or {}}


REGISTRY: Dict[str, Section] = {}


def register(cls):
    """Class decorator: add one instance of the Section subclass to ``REGISTRY`` (names unique)."""
    s = cls()
    if not s.name or s.name in REGISTRY:
        raise ValueError(f"section name {s.name!r} is empty or already registered")
    REGISTRY[s.name] = s
    return cls


def registered() -> Dict[str, Section]:
    """Every registered section, in report order (imports every module of ``sections/`` once)."""
    from . import sections as pkg
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{m.name}")
    return dict(sorted(REGISTRY.items(), key=lambda kv: kv[1].order))


def all_params() -> List[Param]:
    """Every section's parameters, in report order (names unique across sections)."""
    out: Dict[str, Param] = {}
    for s in registered().values():
        for q in s.params:
            if q.name in out:
                raise ValueError(f"study parameter {q.name!r} declared twice")
            out[q.name] = q
    return list(out.values())
