"""``FindConfig``: every parameter of the method, declared and validated once.

The fields (with their help text) generate find_critical's keyword arguments, the CLI flags
(``FindConfig.add_arguments``), the keys a sweep spec may set (``FindConfig.names()``) and the result's
``params`` (``FindConfig.params()``). An instance is frozen and valid: ``__post_init__`` raises ``ValueError``
on any bad value, before a model is touched.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Dict, Iterable, Optional, Tuple

from ..models.registry import SCOPES
from ..utils import positive_int
from .budget import HELP as BATCH_TOKENS_HELP
from .rankers import ranker_help, ranker_names
from .ranking import RANKINGS

STRATEGIES = ("linear", "bisect", "first")
STAGE1_DTYPES = ("bfloat16", "float16")
STAGE2_DTYPES = ("bfloat16", "float16", "float32")
AUTO_MIN_K = 8  # k="auto": the smallest max_k that allows two doublings of K (2, 4, 8)


def _field(default, help: str, *, choices: Optional[Tuple] = None, group: str = "method", flag: Optional[str] = None,
           auto: bool = False):
    """A FindConfig field: ``help`` is the CLI help; ``help`` and ``choices`` may be functions (read when used, e.g.
    the registered rankers); ``group`` orders the flags (text, stage1, stage2, run); ``auto``: the string "auto" is
    accepted besides the field's type."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                                         "flag": flag, "auto": auto})


@dataclasses.dataclass(frozen=True)
class FindConfig:
    # -- text -----------------------------------------------------------------------------------------------------
    max_tokens: int = _field(512, "use the first N tokens of the text (scoring and evaluation)", group="text")
    # -- Stage 1: ranking -----------------------------------------------------------------------------------------
    ranker: str = _field("sensitivity", ranker_help, choices=ranker_names, group="stage1")
    k: int = _field(100, "noisy samples K, or auto: sample in doubling chunks until the critical set is stable "
                    "(see max_k)", group="stage1", auto=True)
    max_k: int = _field(100, "with k=auto: at most this many noisy samples (the default equals K's, so auto "
                        "never samples more than a default run)", group="stage1")
    alpha: float = _field(5.0, "absolute noise scale added to the token embeddings", group="stage1")
    seed: int = _field(0, "noise (and random-baseline) seed", group="stage1")
    scope: str = _field("down_proj", "modules scanned: down_proj (MLP down projection of every layer), all "
                        "(every Linear/norm output of attention and MLP blocks) or paper (exactly the modules the "
                        "authors' code scans, MLP activations included)", choices=SCOPES, group="stage1")
    ranking: str = _field("per_token", "per_token (paper: every (module, position, channel) entry ranked), max or "
                          "mean over positions", choices=RANKINGS, group="stage1")
    stage1_dtype: Optional[str] = _field(None, "run the Stage 1 forwards under autocast in this dtype (faster); "
                                         "with a fixed k the low-precision ranking is kept only when a calibrated "
                                         "margin certifies that the answer is the model's-dtype one, else Stage 1 "
                                         "runs again in the model's dtype (stats: stage1_certified)",
                                         choices=STAGE1_DTYPES, group="stage1")
    max_score_mb: Optional[float] = _field(None, "memory (MB) for Stage 1's clean copies + score accumulators; "
                                           "above it targets are scored in groups (default: a quarter of free "
                                           "memory)", group="stage1")
    discover: bool = _field(False, "model type not in the registry: scan modules named like an MLP down "
                            "projection (best effort; check the reported modules)", group="stage1")
    # -- Stage 2: search ------------------------------------------------------------------------------------------
    epsilon: float = _field(1.0, "stop at the first n with log10(PPL_masked / PPL_clean) >= epsilon", group="stage2")
    step: int = _field(1, "candidate prefix sizes n = step, 2 step, ...", group="stage2")
    max_neurons: int = _field(1000, "give up after this many neurons", group="stage2")
    strategy: str = _field("first", "Stage 2 search: first (the paper's answer, the first n crossing epsilon: "
                           "exponential probes, then every smaller n evaluated in batches; costs about what linear "
                           "costs), linear (the paper's n = step, 2 step, ...) or bisect (exponential + bracketing "
                           "probes, ~log2(n) evaluations; on a non-monotone curve it may return a later crossing)",
                           choices=STRATEGIES, group="stage2")
    batch_size: Optional[int] = _field(None, "Stage 2 candidates per evaluation call (default: 16 on CUDA; CPU: 4 "
                                       "per scan, 1 per probe and for bisect, and prefixes share a forward only "
                                       "when that runs fewer layers, each with its own forward's bits)",
                                       group="stage2")
    verify: bool = _field(True, "re-evaluate the final set with in-place weight masking", group="stage2")
    incremental: bool = _field(True, "run each prefix evaluation from the first decoder layer whose mask changed, on "
                               "cached layer outputs (exact; families that cannot, or a cache over the memory "
                               "budget, fall back to full forwards with the reason in stats)", group="stage2")
    stage2_dtype: Optional[str] = _field(None, "evaluate prefixes under autocast in this dtype; every prefix whose "
                                         "log10 ratio lies within a calibrated margin of epsilon is re-evaluated in "
                                         "float32 before it decides anything, the final set verified in float32 "
                                         "(default: the model's dtype)", choices=STAGE2_DTYPES, group="stage2")
    # -- execution ------------------------------------------------------------------------------------------------
    max_batch_tokens: Optional[int] = _field(None, BATCH_TOKENS_HELP, group="run")
    kernels: bool = _field(True, "use the compiled/Triton ops (off: the pure-PyTorch references)", group="run")
    top_report: int = _field(50, "head of the ranking stored in the result", group="run")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        if self.k != "auto":
            positive_int(self.k, "k", "number of noisy samples")
        positive_int(self.max_k, "max_k")
        if self.k == "auto" and self.max_k < AUTO_MIN_K:
            raise ValueError(f"k='auto' needs max_k >= {AUTO_MIN_K} (samples 2, 4, 8: two doublings), got {self.max_k}")
        _positive_finite(self, "alpha", "noise scale")
        _positive_finite(self, "epsilon", "log10 PPL ratio threshold")
        positive_int(self.step, "step")
        positive_int(self.max_neurons, "max_neurons")
        positive_int(self.top_report, "top_report")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens!r}")
        for name in ("batch_size", "max_batch_tokens"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name)
        if self.max_score_mb is not None:
            _positive_finite(self, "max_score_mb")
        for f in dataclasses.fields(self):
            ch = _choices(f)
            v = getattr(self, f.name)
            if ch and v is not None and v not in ch:
                raise ValueError(f"unknown {f.name} {v!r}: expected one of {', '.join(ch)}")

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def names(cls) -> Tuple[str, ...]:
        """Field names: find_critical's keyword arguments and the keys a sweep may set."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def make(cls, config: Optional["FindConfig"] = None, **overrides) -> "FindConfig":
        """``config`` (default: the defaults) with ``overrides``; unknown names raise TypeError like a function."""
        bad = sorted(set(overrides) - set(cls.names()))
        if bad:
            raise TypeError(f"unexpected parameter(s) {', '.join(bad)}; FindConfig has {', '.join(cls.names())}")
        base = config if config is not None else cls()
        return dataclasses.replace(base, **overrides) if overrides else base

    def replace(self, **changes) -> "FindConfig":
        return self.make(self, **changes)

    def params(self) -> Dict[str, Any]:
        """JSON-ready parameters (the result's ``params``)."""
        return dataclasses.asdict(self)

    # -- CLI ------------------------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: Optional[Iterable[str]] = None,
                      exclude: Iterable[str] = ()) -> None:
        """One flag per field (``--max-tokens``; booleans: ``--no-kernels`` / ``--discover``), help with default."""
        keep = set(cls.names() if only is None else only) - set(exclude)
        groups: Dict[str, argparse._ArgumentGroup] = {}
        titles = {"text": "text", "stage1": "Stage 1 (ranking)", "stage2": "Stage 2 (search)", "run": "execution",
                  "method": "method"}
        for f in dataclasses.fields(cls):
            if f.name not in keep:
                continue
            md = dict(f.metadata, help=_help(f))
            g = groups.get(md["group"]) or groups.setdefault(md["group"], parser.add_argument_group(titles[md["group"]]))
            base, _ = _base_type(f)
            flag = md["flag"] or "--" + f.name.replace("_", "-")
            if base is bool:
                if f.default:
                    g.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                   default=True, help=f"do not {md['help']}" if md["help"][0].islower() else md["help"])
                else:
                    g.add_argument(flag, dest=f.name, action="store_true", default=False, help=md["help"])
                continue
            default = "auto" if f.default is None else f.default
            hlp = md["help"] if "(default:" in md["help"] else f"{md['help']} (default: {default})"  # said once
            g.add_argument(flag, dest=f.name, type=_cli_type(base, md.get("auto")), default=f.default,
                           choices=_choices(f), metavar=None if _choices(f) else f.name.upper(), help=hlp)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> "FindConfig":
        """The fields present in a parsed namespace (others keep their defaults), then ``overrides``."""
        got = {n: getattr(args, n) for n in cls.names() if hasattr(args, n)}
        got.update(overrides)
        return cls(**got)


# ---- validation helpers --------------------------------------------------------------------------------------------
def _help(f: dataclasses.Field) -> str:
    h = f.metadata["help"]
    return h() if callable(h) else h


def _choices(f: dataclasses.Field) -> Optional[Tuple]:
    ch = f.metadata["choices"]
    return ch() if callable(ch) else ch


def _base_type(f: dataclasses.Field):
    """(type, optional) of a field from its annotation (``Optional[int]`` -> (int, True))."""
    hints = typing.get_type_hints(FindConfig)
    t = hints[f.name]
    args = typing.get_args(t)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return t, False


def _cli_type(base, auto: bool = False):
    conv = {int: int, float: float, str: str}[base]
    if not auto:
        return conv

    def auto_or(v: str):
        return "auto" if v == "auto" else conv(v)
    auto_or.__name__ = f"{conv.__name__} or auto"  # argparse names the type in its error message
    return auto_or


def _coerce(f: dataclasses.Field, v):
    """Check a value's type (ints accepted for floats); bools are never ints here."""
    base, optional = _base_type(f)
    if f.metadata.get("auto") and v == "auto":
        return v
    if v is None:
        if optional:
            return None
        raise ValueError(f"{f.name} must not be None")
    if base is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{f.name} must be true or false, got {v!r}")
        return v
    if base is int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise ValueError(f"{f.name} must be an integer, got {v!r}")
        return int(v)
    if base is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{f.name} must be a number, got {v!r}")
        return float(v)
    if not isinstance(v, str):
        raise ValueError(f"{f.name} must be a string, got {v!r}")
    return v


def _positive_finite(cfg: FindConfig, name: str, what: str = "") -> None:
    v = getattr(cfg, name)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}{f' ({what})' if what else ''} must be a finite number > 0, got {v!r}")
