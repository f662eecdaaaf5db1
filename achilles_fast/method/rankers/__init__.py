"""Rankers: the ``Ranker`` interface and the registry, the one list of rankers, filled by this package.

Every module of this package (other than those whose name starts with ``_``) holds one ranker and registers it
with ``register_ranker``; importing the package imports them all (``sensitivity`` first, then by name). FindConfig
validates ``ranker`` against ``ranker_names()`` and takes its help from ``ranker_help()``; the CLI flags and the
``baselines`` command derive from them. A ranker outside the package registers itself the same way
(``achilles_fast.register_ranker``).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...models.targets import Target
from ..ranking import Ranking


class Ranker:
    """Ranks the output channels of ``targets``: subclass it, implement ``rank`` and register the class.

    ``timing_key``: the name of the ranking step in ``result.timings``. ``stats``: what the last ``rank`` call
    reports (forward counts, ...), copied into ``result.stats``.
    """

    timing_key = "rank"

    def __init__(self, config, progress: bool = False):
        self.config = config  # the FindConfig of the run
        self.progress = progress
        self.stats: dict = {}

    def rank(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> Ranking:
        """ids [T] (long) -> Ranking of at most ``config.max_neurons`` channels."""
        raise NotImplementedError

    def use_stage2(self, sizes_of: Callable[[Ranking], List[int]]) -> None:
        """Called before ``rank`` with Stage 2's oracle (a ranking -> its critical-set size per epsilon), for a
        ranker that stops on Stage 2's sets (sensitivity with ``k="auto"``). Others ignore it (this default)."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Ranker]
    help: str
    variant_of: Optional[str]


_RANKERS: Dict[str, _Entry] = {}


def register_ranker(name: str, factory: Callable[..., Ranker], *, help: str = "",
                    variant_of: Optional[str] = None) -> None:
    """Make ``factory(config, progress: bool) -> Ranker`` (usually a ``Ranker`` subclass) available as
    ``FindConfig(ranker=name)``. ``help``: a few words for the CLI help; ``variant_of``: the ranker this one is the
    paper's variant of (``baselines --signed-per-entry`` runs it in that ranker's place)."""
    _RANKERS[name] = _Entry(factory, help, variant_of)


def ranker_names() -> Tuple[str, ...]:
    """Every registered ranker, in registration order."""
    return tuple(_RANKERS)


def ranker_help() -> str:
    """One line naming every ranker and what it does (FindConfig's help for ``ranker``)."""
    return "how channels are ranked: " + "; ".join(
        f"{n} ({e.help})" if e.help else n for n, e in _RANKERS.items())


def paper_variants() -> Dict[str, str]:
    """{ranker: the paper's variant of it}."""
    return {e.variant_of: n for n, e in _RANKERS.items() if e.variant_of is not None}


def make_ranker(config, progress: bool = False) -> Ranker:
    """The Ranker that ``config.ranker`` names, set up from ``config``."""
    ranker = _RANKERS[config.ranker].factory(config, progress)
    if not isinstance(ranker, Ranker):
        raise TypeError(f"ranker {config.ranker!r}: its factory made a {type(ranker).__name__}, not a Ranker "
                        "(subclass achilles_fast.Ranker)")
    return ranker


def _load_all() -> None:
    """Import every ranker module of this package: each registers its ranker."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in sorted(names, key=lambda n: n != "sensitivity"):  # the method first, then the baselines by name
        importlib.import_module(f"{__name__}.{name}")


_load_all()
