"""Stage 1: sensitivity scores, streamed over K noisy samples.

score[m][t, c] = mean_k | f_m(x)[t, c] - f_m(x + alpha * eps_k)[t, c] |

One clean forward stores each target's clean output [T, C]. The K noisy samples then run in chunks of ``kb``
sequences (``inputs_embeds`` = clean embeddings + Philox noise made on the device); a forward hook on each
target reduces the chunk's |noisy - clean| into a float32 accumulator as soon as the output exists, so noisy
activations are never stored and peak memory does not grow with K. The forward is cut short after the last
target fires (the LM head and anything after the last scanned module are never computed). When the clean
copies and accumulators of all targets exceed the memory budget (``max_score_mb``; e.g. every expert of a large
MoE), the targets are split into groups and Stage 1 runs once per group, with the same chunks and noise.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..models.devices import autocast, embedding_device
from ..models.lowp_weights import LowPrecisionWeights
from ..models.targets import Target
from .budget import auto_score_bytes, stage1_batch_tokens
from .callbacks import between_forwards
from .ranking import EntryCount, PositionMax, Ranking, Scores, ranking_from_scores


@contextlib.contextmanager
def lowp_forwards(model: nn.Module, dtype: Optional[str]) -> Iterator[None]:
    """Stage 1's forwards in ``dtype`` ("bfloat16", "float16"; None: the model's own): autocast, with every float32
    Linear weight but the LM head swapped for one cast copy for the whole block (``LowPrecisionWeights``: the values
    autocast would cast at every forward, cast once; the model's Parameters are back on exit, whatever happens)."""
    if dtype is None or dtype == "float32":
        yield
        return
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weights = LowPrecisionWeights(model, getattr(torch, dtype), auto_score_bytes(embedding_device(model)),
                                  skip=[head] if head is not None else [])  # Stage 1 stops before the head
    with autocast(model, dtype), weights.swapped():
        yield


class _StopForward(Exception):
    """Raised by the last target's hook: nothing after it is needed."""


def input_embeddings(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """ids [T] -> embeddings [T, H] from the model's own input embedding layer."""
    emb = model.get_input_embeddings()
    w = getattr(emb, "weight", None)
    dev = w.device if w is not None and w.device.type != "meta" else ids.device
    return emb(ids.to(dev).unsqueeze(0))[0]


class NoiseResolutionError(ValueError):
    """Stage 1 scores that rank nothing: all zero (the noise vanished in the model's precision) or not finite."""


class _Capture:
    """Hooks that record the clean output of each target, or reduce noisy outputs into accumulators."""

    def __init__(self, targets: Sequence[Target], stop_early: bool):
        self.targets = list(targets)
        self.stop_early = stop_early
        self.mode = "clean"
        self.clean: List[Optional[torch.Tensor]] = [None] * len(self.targets)
        self.acc: List[Optional[torch.Tensor]] = [None] * len(self.targets)
        self.acc2: List[Optional[torch.Tensor]] = [None] * len(self.targets)  # sums of squares (adaptive K only)
        self.fired = 0
        self.batch = 1
        self.handles = []

    def __enter__(self):
        for i, t in enumerate(self.targets):
            self.handles.append(t.register_forward_hook(self._hook(i, t)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

    def _hook(self, i: int, t: Target):
        def hook(module, args, out):
            if self.mode == "off":  # other forwards while the hooks stay registered (adaptive K's Stage 2 checks)
                return None
            y = t.output(out)  # [B, T, C], or [B*T, C] for modules fed flattened tokens (MoE experts, OPT fc2)
            if y.dim() == 2:
                y = y.reshape(self.batch, -1, y.shape[-1])
            if self.mode == "clean":
                self.clean[i] = y[0].detach().clone()  # [T, C]
            else:
                noisy = y.reshape(-1, *self.clean[i].shape)  # [n, T, C]
                ops.absdiff_accum_(self.acc[i], self.clean[i], noisy)
                if self.acc2[i] is not None:  # running variance: sum_k d^2 of what acc sums
                    d = (noisy.float() - self.clean[i].float()).abs()  # [n, T, C]
                    self.acc2[i].add_((d if self.acc2[i].dim() == 2 else d.sum(1)).square().sum(0))
            self.fired += 1
            if self.stop_early and self.fired == len(self.targets):
                raise _StopForward
            return None

        return hook

    def start(self, model: nn.Module, embeds: torch.Tensor, per_position: bool, squares: bool = False) -> None:
        """The clean forward of embeds [T, H]: stores each target's clean output and makes its float32 accumulator
        ([T, C], or [C] when not per_position; ``squares``: a second one for the running variance)."""
        self.run(model, embeds.unsqueeze(0))
        for i, t in enumerate(self.targets):
            if self.clean[i] is None:
                raise RuntimeError(f"target {t.name} did not run during the forward pass")
            shape = self.clean[i].shape if per_position else self.clean[i].shape[-1:]
            self.acc[i] = torch.zeros(shape, dtype=torch.float32, device=self.clean[i].device)
            if squares:
                self.acc2[i] = torch.zeros_like(self.acc[i])
        self.mode = "noisy"

    def run(self, model: nn.Module, embeds: torch.Tensor) -> None:
        """One forward of embeds [B, T, H]; stops after the last target."""
        between_forwards()
        self.fired = 0
        self.batch = embeds.shape[0]
        try:
            model(inputs_embeds=embeds, use_cache=False)
        except _StopForward:
            pass

    def sample(self, model: nn.Module, embeds: torch.Tensor, alpha: float, seed: int, start: int, stop: int,
               kb: int, progress: Optional[Callable[[int], None]] = None, dtype: Optional[str] = None) -> int:
        """Noisy samples start .. stop-1 of embeds [T, H] through the hooks, kb per forward (under ``dtype``
        autocast); -> forwards run."""
        forwards = 0
        for k0 in range(start, stop, kb):
            n = min(kb, stop - k0)
            noisy = ops.noisy_embeds(embeds, float(alpha), int(seed), k0, n)  # [n, T, H]
            if k0 == 0 and torch.equal(noisy[0], embeds):
                raise NoiseResolutionError(f"alpha {alpha:g} leaves the embeddings unchanged: the noise is below the "
                                           "model's resolution: raise alpha")
            with autocast(model, dtype):
                self.run(model, noisy)
            forwards += 1
            if progress is not None:
                progress(n)
        return forwards


def score_groups(targets: Sequence[Target], n_tokens: int, per_position: bool, elem_bytes: int,
                 budget_bytes: int, accumulators: int = 1) -> List[List[int]]:
    """Split target indices (scan order) into groups whose clean outputs [T, C] (``elem_bytes`` each) and float32
    accumulators ([T, C] or [C]) fit ``budget_bytes``; Stage 1 runs once per group. A target larger than the
    budget gets a group of its own."""
    groups: List[List[int]] = []
    cur: List[int] = []
    used = 0
    for i, t in enumerate(targets):
        need = t.num_channels * (n_tokens * elem_bytes + (n_tokens if per_position else 1) * 4 * accumulators)
        if cur and used + need > budget_bytes:
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    if cur:
        groups.append(cur)
    return groups


def plan_groups(model: nn.Module, targets: Sequence[Target], n_tokens: int, per_position: bool = True,
                max_score_mb: Optional[float] = None, accumulators: int = 1) -> List[List[int]]:
    """Target groups for a score budget of ``max_score_mb`` (default: ``auto_score_bytes``)."""
    budget = int(max_score_mb * 2**20) if max_score_mb is not None else auto_score_bytes(embedding_device(model))
    return score_groups(targets, n_tokens, per_position, model.get_input_embeddings().weight.element_size(), budget,
                        accumulators)


def sensitivity_scores(
    model: nn.Module,
    targets: Sequence[Target],
    ids: torch.Tensor,
    k: int = 100,
    alpha: float = 5.0,
    seed: int = 0,
    per_position: bool = True,
    max_batch_tokens: Optional[int] = None,
    max_score_mb: Optional[float] = None,
    groups: Optional[List[List[int]]] = None,
    reduce_positions: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    stats: Optional[dict] = None,
    snapshots: Optional[Sequence[int]] = None,
    entries: Optional[EntryCount] = None,
):
    """Mean |clean - noisy| per target: list of float32 [T, C] (per_position) or [C] (summed over positions).

    ids [T] (long); ``progress(n)`` is called with the number of samples finished after each chunk (k per target
    group). ``max_score_mb`` bounds the clean copies + accumulators held at once (default: a quarter of free
    memory): when all targets do not fit, Stage 1 runs once per group of targets (``plan_groups``), each run cut
    after its group's last target. Scores do not depend on the grouping (same chunks, same noise). ``groups``: a
    plan already made by ``plan_groups`` (then ``max_score_mb`` is not used).
    ``reduce_positions``: return each target's ``PositionMax`` (what the per_token and max rankings need) instead of
    [T, C], made as soon as its group is done, so only the current group's [T, C] accumulators are ever held.
    ``snapshots``: sample counts K (``k`` is then their maximum) -> {K: scores of the first K samples}, all from one
    pass: the noise of sample k depends only on (seed, k), so the scores at K are a prefix mean (chunks are cut at
    each K).
    ``entries``: fed each target's [T, C] scores at K = ``k`` (the per_token ranking's entry counts).
    """
    ks = sorted({int(x) for x in snapshots}) if snapshots else [k]
    k = ks[-1]
    T = int(ids.numel())
    embeds = input_embeddings(model, ids)  # [T, H]
    kb = max(1, min(k, stage1_batch_tokens(max_batch_tokens, embeds.device) // T))
    if groups is None:
        groups = plan_groups(model, targets, T, per_position, max_score_mb)
    scores: Dict[int, List[Optional[Scores]]] = {K: [None] * len(targets) for K in ks}
    forwards = 0
    for group in groups:
        with torch.no_grad(), _Capture([targets[i] for i in group], stop_early=True) as cap:
            cap.start(model, embeds, per_position)
            forwards += 1
            done = 0
            for K in ks:
                forwards += cap.sample(model, embeds, alpha, seed, done, K, kb, progress)
                done = K
                for j, i in enumerate(group):
                    a = cap.acc[j].div_(k) if K == k else cap.acc[j] / K
                    if entries is not None and K == k and per_position:
                        entries.add(a)
                    scores[K][i] = PositionMax.of(a) if reduce_positions and per_position else a
            cap.acc = [None] * len(cap.acc)
            cap.clean = []  # free this group's clean copies before the next group
    if stats is not None:
        stats.update(stage1_forwards=forwards, stage1_chunk=kb, stage1_chunks=math.ceil(k / kb),
                     stage1_groups=len(groups))
    return scores if snapshots else scores[k]


def check_scores(ranking: Ranking, alpha: float) -> Ranking:
    """``ranking`` unchanged when its best score is finite and > 0; NoiseResolutionError otherwise (an all-zero
    ranking is index order, not a ranking)."""
    s = ranking.scores  # [n] best first
    if s.numel() and not bool(torch.isfinite(s).all()):
        raise NoiseResolutionError(f"the Stage 1 scores are not finite (alpha {alpha:g}): the noise overflows the "
                                   "model's precision: lower alpha")
    if s.numel() and not float(s[0]) > 0:
        raise NoiseResolutionError(f"every Stage 1 score is 0 (alpha {alpha:g}): the noise is below the model's "
                                   "resolution: raise alpha")
    return ranking


AUTO_START_K = 2  # k="auto": samples at the first check (then 4, 8, 16, ...)
AUTO_Z = 3.0  # k="auto": the set's scores must exceed the next candidates' by this many combined standard errors


def _flat_stats(mean: Sequence[torch.Tensor], var: Sequence[torch.Tensor], k: int, mode: str, n_tokens: int):
    """Per target mean/variance of the score entries -> (scores as ``rank_channels`` takes them, flat value [N],
    flat standard error [N] of each channel's ranked score)."""
    scores, vals, ses = [], [], []
    for m, v in zip(mean, var):
        se = (v / k).sqrt()
        if m.dim() == 2:  # per_token / max: a channel's score is its entry at its first max position
            pm = PositionMax.of(m)
            scores.append(pm)
            vals.append(pm.values)
            ses.append(se.gather(0, pm.pos.clamp(max=m.shape[0] - 1)[None])[0])
        else:  # mean: per-sample sums over positions
            scores.append(m / n_tokens)
            vals.append(m / n_tokens)
            ses.append(se / n_tokens)
    return scores, torch.cat([x.float().cpu() for x in vals]), torch.cat([x.float().cpu() for x in ses])


def separated(ranking: Ranking, n: int, values: torch.Tensor, se: torch.Tensor, z: float = AUTO_Z) -> bool:
    """The first ``n`` channels of ``ranking`` score above each of the next max(n, 8) candidates by more than ``z``
    combined standard errors (``values``/``se`` [N] indexed by flat channel id)."""
    head, nxt = ranking.channels[:n], ranking.channels[n:n + max(n, 8)]
    if head.numel() == 0 or nxt.numel() == 0:
        return True
    gap = values[head][:, None] - values[nxt][None, :]  # [n, m]
    bound = z * (se[head][:, None] ** 2 + se[nxt][None, :] ** 2).sqrt()
    return bool((gap > bound).all())


def adaptive_ranking(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, sizes_of, *, alpha: float,
                     seed: int, mode: str, top: int, max_k: int, max_batch_tokens: Optional[int] = None,
                     max_score_mb: Optional[float] = None, stage1_dtype: Optional[str] = None,
                     z: Optional[float] = None,
                     progress: Optional[Callable[[int], None]] = None, stats: Optional[dict] = None) -> Ranking:
    """Stage 1 with K chosen by the data (``k="auto"``): sample K = 2, 4, 8, ... (up to ``max_k``) noisy copies,
    rank after each doubling, and stop when the critical sets (``sizes_of(ranking)`` -> the set size per epsilon,
    from Stage 2) are unchanged over two successive doublings and each set's scores are separated from the next
    candidates by more than ``z`` (default ``AUTO_Z``) standard errors (running variance of the entries). The noise is deterministic per
    sample index, so the scores at K are exactly the mean of a fixed K run's first K samples, and a run that
    never stops early ends with the ranking of a fixed ``max_k`` run. A check runs Stage 2 only when it is free (the
    heads of the last sets unchanged) or the last sets are still separated (else it cannot stop there), so unstable
    rankings cost few searches. ``stats`` gets
    ``k_used`` and the checks made ([K, set sizes or None when not searched, separated])."""
    z = AUTO_Z if z is None else z
    T = int(ids.numel())
    per_position = mode != "mean"
    if len(plan_groups(model, targets, T, per_position, max_score_mb, accumulators=2)) > 1:
        raise ValueError("k='auto' keeps every target's Stage 1 scores and their variances in memory, and they do not "
                         "fit the score budget (max_score_mb): raise max_score_mb or use a fixed k")
    embeds = input_embeddings(model, ids)  # [T, H]
    kb = max(1, stage1_batch_tokens(max_batch_tokens, embeds.device) // T)
    history: List[Optional[tuple]] = []  # per check: the sets (one per epsilon), None when not searched
    checks = []
    sizes: Optional[List[int]] = None
    last = torch.empty(0, dtype=torch.long)  # the ranking last searched
    forwards, k, want, stable = 0, 0, min(AUTO_START_K, max_k), False
    with torch.no_grad(), _Capture(targets, stop_early=True) as cap:
        with autocast(model, stage1_dtype):
            cap.start(model, embeds, per_position, squares=True)
        forwards += 1
        while True:
            cap.mode = "noisy"
            forwards += cap.sample(model, embeds, alpha, seed, k, want, kb, progress, stage1_dtype)
            cap.mode = "off"  # the Stage 2 checks below run plain forwards
            k = want
            mean = [a / k for a in cap.acc]
            var = [(a2 / k - m.square()).clamp_min(0) * (k / max(k - 1, 1)) for a2, m in zip(cap.acc2, mean)]
            scores, values, se = _flat_stats(mean, var, k, mode, T)
            wide = check_scores(ranking_from_scores(targets, scores, mode, 2 * top + 8), alpha)  # + candidates
            ranking = wide.head(top)
            if k >= max_k:
                break
            # Stage 2 when it is free (the heads of the sets found last are unchanged, in order: every prefix is
            # answered from memory) or when those sets are still separated here; otherwise K cannot stop now (the
            # sets changed, or they are not separated), so the check counts as a change and costs no search
            if sizes is None or all(torch.equal(ranking.channels[:n], last[:n]) for n in sizes) \
                    or all([separated(wide, n, values, se, z) for n in sizes]):
                last = ranking.channels
                sizes = list(sizes_of(ranking))
                history.append(tuple(frozenset(ranking.channels[:n].tolist()) for n in sizes))
                apart = all([separated(wide, n, values, se, z) for n in sizes])
                checks.append([k, sizes, apart])
            else:
                history.append(None)
                apart = False
                checks.append([k, None, False])
            stable = apart and len(history) >= 3 and history[-1] == history[-2] == history[-3]
            if stable:
                break
            want = min(2 * k, max_k)
    if stats is not None:
        stats.update(stage1_forwards=forwards, stage1_chunk=kb, stage1_chunks=forwards - 1, stage1_groups=1,
                     k_used=k, auto_k={"checks": checks, "stable": stable, "z": z, "max_k": max_k})
    return ranking


