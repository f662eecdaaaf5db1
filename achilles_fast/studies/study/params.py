"""``StudyParams``: every section's parameters (declared on the sections, ``section.Param``) as one frozen
dataclass, the ``--quick`` preset, and ``parse_sections``.

The method's parameters stay in ``FindConfig`` (the default set is found with it); a grid value is validated by
building the FindConfig it stands for, so the messages are the method's own.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from .section import Param, StudyError, all_params, registered

SECTIONS: Tuple[str, ...] = tuple(registered())  # report order
PARAMS: Dict[str, Param] = {q.name: q for q in all_params()}


def _post_init(self) -> None:
    for q in PARAMS.values():
        q.validate(getattr(self, q.name))


def _make(cls, quick: bool = False, **overrides) -> "StudyParams":
    """The full (default) or ``--quick`` preset with ``overrides`` (None values are ignored)."""
    bad = sorted(set(overrides) - set(PARAMS))
    if bad:
        raise TypeError(f"unexpected study parameter(s) {', '.join(bad)}")
    kw = {q.name: q.quick_value if quick else q.default for q in PARAMS.values()}
    kw.update({k: _tuple(v) for k, v in overrides.items() if v is not None})
    return cls(**kw)


def _to_dict(self) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


StudyParams = dataclasses.make_dataclass(
    "StudyParams", [(q.name, Any, dataclasses.field(default=q.default)) for q in PARAMS.values()], frozen=True,
    namespace={"__post_init__": _post_init, "make": classmethod(_make), "to_dict": _to_dict,
               "__doc__": "The study's parameters (one field per section ``Param``; see ``PARAMS``).",
               "__module__": __name__})


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def parse_sections(spec) -> Tuple[str, ...]:
    """'cooperativity,mechanism' (or a list, or None = all) -> sections in report order; unknown names raise."""
    every = tuple(registered())
    if spec is None:
        return every
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    bad = [s for s in names if s not in every]
    if bad or not names:
        raise StudyError(f"unknown section(s) {', '.join(bad) or '(none given)'}: expected some of "
                         f"{', '.join(every)}")
    return tuple(s for s in every if s in names)


__all__ = ["StudyParams", "StudyError", "SECTIONS", "PARAMS", "parse_sections"]
