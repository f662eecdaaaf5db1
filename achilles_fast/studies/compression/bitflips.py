"""Single-bit faults in int8 weights: the model stored as int8 (8-bit per-channel RTN of every decoder-block Linear
weight), flips of one bit of one stored code, a greedy search for the fewest flips that raise log10 PPL by epsilon,
random flips as the control, and a replay of recorded flips.

A flip of bit k of code q (two's complement int8) gives q ^ (1 << k): bit 7 moves the code by 128 (the sign), bit 6
by 64, ... The weight becomes q' * scale of its output channel. Floats are not searched: flipping the top exponent
bit of any float32 / bfloat16 weight multiplies it by ~2^128 (or makes it Inf/NaN), fatal wherever it lands, so
there is nothing to find; int8 codes are bounded (|q'| <= 128), so where a flip lands decides whether it matters.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .params import CompressionError
from .quantize import dequantize, rtn_codes
from .weights import BlockWeight, WeightEdits, block_weights

BITS = 8


@dataclasses.dataclass(frozen=True)
class Flip:
    """One bit flip of one stored int8 code: enough to replay it (``replay_flips``)."""
    tensor: str  # parameter name
    index: Tuple[int, ...]  # position in the weight
    bit: int  # 0 (lowest) .. 7 (sign)
    before: int  # int8 code before
    after: int  # int8 code after
    weight_before: float  # dequantised value before
    weight_after: float  # dequantised value after

    def to_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d["index"] = list(self.index)
        return d

    @staticmethod
    def from_dict(d: Dict) -> "Flip":
        return Flip(**{**d, "index": tuple(int(i) for i in d["index"])})


def flip_code(code: int, bit: int) -> int:
    """int8 code with bit ``bit`` flipped (two's complement)."""
    if not 0 <= bit < BITS:
        raise CompressionError(f"bit must be in 0..{BITS - 1}, got {bit}")
    u = (int(code) & 0xFF) ^ (1 << bit)
    return u - 256 if u >= 128 else u


class Int8State:
    """The int8 codes [like the weight] and per-channel scales [C] of every block weight, while ``int8_model``
    holds the model at their dequantised values."""

    def __init__(self, weights: Sequence[BlockWeight], edits: WeightEdits):
        self.weights: Dict[str, BlockWeight] = {bw.name: bw for bw in weights}
        self.codes: Dict[str, torch.Tensor] = {}
        self.scales: Dict[str, torch.Tensor] = {}
        self._edits = edits
        for bw in weights:
            codes, scale = rtn_codes(bw.weight, BITS, None, bw.dim)  # [C, 1, I], [C, 1, 1]
            edits.set_(bw.weight, dequantize(codes, scale, bw.weight, bw.dim))
            self.codes[bw.name] = codes[:, 0].movedim(0, bw.dim).clone()  # like the weight
            self.scales[bw.name] = scale[:, 0, 0].clone()  # [C]

    def _check(self, name: str, index: Sequence[int]) -> Tuple[int, ...]:
        if name not in self.codes:
            raise CompressionError(f"{name!r} is not an int8 block weight of this model")
        idx = tuple(int(i) for i in index)
        shape = self.codes[name].shape
        if len(idx) != len(shape) or not all(0 <= i < s for i, s in zip(idx, shape)):
            raise CompressionError(f"index {list(idx)} out of range for {name} {list(shape)}")
        return idx

    def code(self, name: str, index: Sequence[int]) -> int:
        return int(self.codes[name][self._check(name, index)])

    def value(self, name: str, index: Sequence[int], code: int) -> torch.Tensor:
        """The dequantised weight value of ``code`` at ``index`` (as ``dequantize`` computes it)."""
        bw = self.weights[name]
        scale = self.scales[name][index[bw.dim]]
        return (torch.tensor(float(code)) * scale).to(bw.weight.dtype)

    def _write(self, name: str, idx: Tuple[int, ...], code: int) -> None:
        self.codes[name][idx] = code
        with torch.no_grad():
            self.weights[name].weight.data[idx] = self.value(name, idx, code)

    def flip(self, name: str, index: Sequence[int], bit: int) -> Flip:
        """Flip one bit of one stored code (and the weight with it); returns the record."""
        idx = self._check(name, index)
        before = self.code(name, idx)
        after = flip_code(before, bit)
        f = Flip(name, idx, int(bit), before, after, float(self.value(name, idx, before)),
                 float(self.value(name, idx, after)))
        self._write(name, idx, after)
        return f

    def undo(self, f: Flip) -> None:
        """Put the code (and weight) of flip ``f`` back (flips undone in reverse order)."""
        self._write(f.tensor, f.index, f.before)


@contextlib.contextmanager
def int8_model(model: nn.Module) -> Iterator[Int8State]:
    """Inside the block the model is its int8 version (every block weight at its 8-bit per-channel RTN value);
    yields the Int8State to flip bits in. Weights restored bit-exact on exit, also on exceptions and
    KeyboardInterrupt."""
    with WeightEdits() as edits:
        yield Int8State(block_weights(model), edits)


@contextlib.contextmanager
def replay_flips(model: nn.Module, flips: Sequence) -> Iterator[Int8State]:
    """The int8 model with the recorded ``flips`` (Flip objects or their dicts) applied, in order; each flip's
    ``before`` code is checked first (a mismatch: not the model the flips were found on). Restored on exit."""
    flips = [f if isinstance(f, Flip) else Flip.from_dict(f) for f in flips]
    with int8_model(model) as st:
        for f in flips:
            have = st.code(f.tensor, f.index)
            if have != f.before:
                raise CompressionError(f"flip {f.tensor}{list(f.index)} bit {f.bit}: the stored code is {have}, the "
                                       f"record says {f.before} (a different model or flip order)")
            st.flip(f.tensor, f.index, f.bit)
        yield st


Candidate = Tuple[str, Tuple[int, ...], int]  # (tensor, index, bit)


def critical_candidates(st: Int8State, protect, norms: Dict[str, torch.Tensor]) -> List[Candidate]:
    """The search order over the int8 values producing the protected (critical) channels: bit 7 first, then 6, ...;
    within a bit, the coordinates whose input feature has the largest activation norm first (ties: tensor order,
    then flat index). -> [(tensor, index, bit)]."""
    masks = getattr(protect, "masks", protect) or {}
    coords = []  # (-norm, tensor order, flat index, name, index)
    for order, (name, bw) in enumerate(st.weights.items()):
        m = masks.get(name)
        if m is None or not bool(m.any()):
            continue
        pos = m.nonzero()  # [n, 2]
        inp = pos[:, 1 - bw.dim]  # input feature of each position
        nv = norms[name][inp.cpu()].tolist()
        shape1 = m.shape[1]
        for (i, j), v in zip(pos.tolist(), nv):
            coords.append((-v, order, i * shape1 + j, name, (i, j)))
    coords.sort(key=lambda c: c[:3])
    return [(name, idx, bit) for bit in range(BITS - 1, -1, -1) for *_, name, idx in coords]


@dataclasses.dataclass
class SearchResult:
    flips: List[Flip]  # committed, in order
    ratios: List[float]  # log10 ratio after each committed flip (inf: non-finite loss)
    reached: bool
    evaluations: int


def greedy_flips(st: Int8State, candidates: Sequence[Candidate],
                 evaluate: Callable[[], float], epsilon: float, max_flips: int, per_step: int,
                 progress: Optional[Callable[[], None]] = None) -> SearchResult:
    """Greedy: each step tries the next ``per_step`` untried candidates (in ``candidates`` order) one at a time on
    top of the committed flips and commits the one that raises log10 PPL most, if it raises it; stops at epsilon,
    after ``max_flips`` commits, or when the candidates run out. evaluate(): log10 ratio of the model as it is to
    the int8 model. Committed flips stay applied (the caller's ``int8_model`` block restores them)."""
    flips: List[Flip] = []
    ratios: List[float] = []
    current, evals, pos = 0.0, 0, 0
    used = set()
    while len(flips) < max_flips and pos < len(candidates) and current < epsilon:
        best: Optional[Tuple[float, Tuple]] = None
        tried = 0
        while tried < per_step and pos < len(candidates):
            name, idx, bit = candidates[pos]
            pos += 1
            if (name, idx) in used:
                continue
            f = st.flip(name, idx, bit)
            try:
                r = evaluate()
            finally:
                st.undo(f)
            tried, evals = tried + 1, evals + 1
            if progress is not None:
                progress()
            if best is None or r > best[0]:
                best = (r, (name, idx, bit))
        if best is None or best[0] <= current:
            continue
        name, idx, bit = best[1]
        flips.append(st.flip(name, idx, bit))
        used.add((name, idx))
        current = best[0]
        ratios.append(current)
    return SearchResult(flips, ratios, current >= epsilon, evals)


def random_positions(st: Int8State, bits: Sequence[int], rng: random.Random) -> List[Candidate]:
    """One random position (uniform over every stored int8 value, distinct) for each bit in ``bits``."""
    names = list(st.codes)
    sizes = [st.codes[n].numel() for n in names]
    total = sum(sizes)
    out, seen = [], set()
    for bit in bits:
        while True:
            flat = rng.randrange(total)
            ti = 0
            while flat >= sizes[ti]:
                flat -= sizes[ti]
                ti += 1
            shape = st.codes[names[ti]].shape
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape))
            if (names[ti], idx) not in seen:
                break
        seen.add((names[ti], idx))
        out.append((names[ti], idx, int(bit)))
    return out


def random_trials(st: Int8State, bits: Sequence[int], trials: int, evaluate: Callable[[], float], seed: int = 0,
                  progress: Optional[Callable[[], None]] = None) -> List[Dict]:
    """The control: ``trials`` times, flip the same ``bits`` at random positions, evaluate, undo.
    -> [{"flips": [Flip dict], "log10_ratio": r}] (r inf: non-finite loss)."""
    if trials < 1:
        raise CompressionError(f"random trials must be >= 1, got {trials}")
    rng = random.Random(seed)
    out = []
    for _ in range(trials):
        applied = []
        try:
            for name, idx, bit in random_positions(st, bits, rng):
                applied.append(st.flip(name, idx, bit))
            r = evaluate()
        finally:
            for f in reversed(applied):
                st.undo(f)
        out.append({"flips": [f.to_dict() for f in applied], "log10_ratio": r})
        if progress is not None:
            progress()
    return out


def finite_or_inf(v: float) -> float:
    """A loss-derived number: itself when finite, +inf otherwise (NaN from a broken model counts as broken)."""
    return v if math.isfinite(v) else math.inf
