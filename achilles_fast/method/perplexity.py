"""Mean token NLL (float32 per token, float64 sums) with optional per-batch-element channel masks.

Perplexity ratios are always handled in log space: log10(PPL_a / PPL_b) = (NLL_a - NLL_b) / ln 10, so a collapsed
model (PPL 1e20 and beyond) is reported exactly.

Fast path: run the backbone to the last hidden state and compute the NLL over the LM head in token chunks
(``ops.token_nll``), so the full [B, T, vocab] logits are never materialised. It is used only after a
self-check on the clean text shows it reproduces the model's own logits (families with logit soft-capping or
scaling fall back to the full forward automatically).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..models.batch_exact import SequenceExact
from ..models.devices import autocast, embedding_device, offloaded
from ..models.lowp_weights import LowPrecisionWeights
from ..utils import over_budget
from .budget import auto_score_bytes, eval_batch_tokens
from .callbacks import between_forwards
from .finite import NonFiniteError, nonfinite_error
from .incremental import PrefixCache
from .masking import BatchedMask

LN10 = math.log(10.0)


def log10_ratio(nll: float, nll_ref: float) -> float:
    """log10(PPL / PPL_ref) from mean NLLs (natural log)."""
    return (nll - nll_ref) / LN10


def log10_ppl(nll: float) -> float:
    return nll / LN10


def ppl_or_none(nll: float) -> Optional[float]:
    """exp(nll) when it fits a float64, else None (use log10_ppl)."""
    return math.exp(nll) if math.isfinite(nll) and nll < 700 else None


class NLLEvaluator:
    """Evaluates mean NLL of fixed token windows [W, T] under different prefix masks of a ranking.

    ``max_batch_tokens`` (default ``budget.EVAL_BATCH_TOKENS``) bounds the tokens per forward (B masks x W windows
    are split into sub-batches). A loss that is not finite raises ``NonFiniteError`` (never returned): ``what`` names
    the text in that message. ``incremental``: prefix evaluations run from their first changed decoder layer
    (``PrefixCache``; exact, with a fallback to full forwards). ``dtype``: forwards under autocast in this dtype with
    the Linear weights swapped for cast copies (``LowPrecisionWeights``) and the LM head's logits in that dtype
    (``ops.token_nll_lowp``); None: the model's own.
    """

    LOGIT_CHUNK_BYTES = 256 * 2**20  # logits chunk for the fused NLL path
    # fused calls of one row count before the CPU float32 head is MKL-packed (``ops.PackedHead``): packing costs
    # 5-35 calls' savings (Gemma-3-270M's head, 2 cores: 0.15-1.1 s, then 0.154 -> 0.12 s per call; ~17 s of a
    # 590-evaluation find), so a run of a few evaluations never pays for it and Stage 2's hundreds do
    PACK_HEAD_AFTER = 8
    # CPU: a decoder layer's rows cost ~0.85x per prefix in a forward of 4 (2 cores, 2026-12-03: Gemma-3-270M, T=129,
    # 0.145 -> 0.12 s of layers per prefix, forwards of 8 gained nothing more; SmolLM2-135M full forwards 0.82-0.86x),
    # so 4 prefixes share a forward only when that runs fewer layer-rows: 4 x (layers from their lowest first changed
    # one) x 0.85 <= the sum over their own forwards. A size whose checked forward took over 1.05x its prefixes' own
    # forwards is not shared again (that first forward is cold: Gemma 1.10 s, later ones 1.00 s, alone 4 x 0.275 s;
    # SmolLM2's late-layer prefixes share at ~1.0x: its LM head and Python overhead are most of a prefix's 30-80 ms).
    # A check costs one shared forward (SmolLM2: up to 0.45 s, 10% of a 48-prefix search) and sharing gains ~0.025 s
    # per Gemma prefix, so only after 64 prefixes alone.
    CPU_SHARE_AFTER = 64
    CPU_SHARED_PREFIXES = 4
    CPU_SHARED_ROW_COST = 0.85
    CPU_SHARED_MAX_RATIO = 1.05

    def __init__(self, model: nn.Module, ids: torch.Tensor, max_batch_tokens: Optional[int] = None,
                 fused: Optional[bool] = None, what: str = "the text", incremental: bool = False,
                 dtype: Optional[str] = None):
        self.model = model
        self.what = what
        ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
        self.ids = ids  # [W, T]
        self.W, self.T = ids.shape
        if self.T < 2:
            raise ValueError("need at least 2 tokens per window to compute a next-token loss")
        self.max_batch_tokens = max(self.T, int(eval_batch_tokens(max_batch_tokens)))
        self.forwards = 0
        self.device = embedding_device(model)
        self._head = None
        self.dtype = dtype if dtype != "float32" else None
        self.lowp = None
        if self.dtype:
            self.lowp = LowPrecisionWeights(model, getattr(torch, dtype), auto_score_bytes(self.device))
        self._packed: Optional[ops.PackedHead] = None
        self._pack_calls = self._pack_rows = 0  # fused calls of ``_pack_rows`` rows since the shape or head changed
        self._pack_checked = False  # the current packing's first call was compared with the plain GEMMs
        self.head_packing: Optional[str] = None  # why the head is not packed (None: it may be)
        self.seq_exact = SequenceExact(model) if self.device.type == "cpu" else None
        # CPU, per (forward size, threads): the layer signatures on which a shared forward reproduced each of its
        # prefixes' own forwards; why a size is not shared (it did not, or was slower than they were)
        self.batch_exact: Dict[Tuple[int, int], frozenset] = {}
        self.not_shared: Dict[Tuple[int, int], str] = {}
        self.shared_forwards = 0  # CPU forwards of several prefixes
        self.masked_jobs = 0  # (prefix, window) evaluations under a mask
        self.fused = False
        if fused is not False:
            self.fused = self._check_fused()
            if fused is True and not self.fused:
                raise RuntimeError("fused NLL requested but it does not reproduce this model's logits")
        self.cache = (PrefixCache(model, self.W, self.T, self.max_batch_tokens // self.T) if incremental
                      else None)

    # -- forward passes ---------------------------------------------------------------------------
    def _token_nll_full(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> per-token NLL [B, T-1] float32 via the model's full forward."""
        logits = self.model(input_ids=ids.to(self.device), use_cache=False).logits  # [B, T, V]
        lg = logits[:, :-1].float()
        tgt = ids[:, 1:].to(lg.device)
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)

    def _token_nll_fused(self, ids: torch.Tensor, per_sequence: bool = False) -> torch.Tensor:
        """ids [B, T] -> per-token NLL [B, T-1] float32 via backbone + chunked LM head (``per_sequence``: the head's
        rows of each sequence as its own forward computes them)."""
        out = self.model.base_model(input_ids=ids.to(self.device), use_cache=False)
        h = out[0] if isinstance(out, tuple) else out.last_hidden_state  # [B, T, H]
        head = self._head
        h = h[:, :-1].to(head.weight.device, head.weight.dtype)  # (autocast: the head in its own dtype)
        tgt = ids[:, 1:].to(h.device)
        B, Tm1, H = h.shape
        chunk = max(1, self.LOGIT_CHUNK_BYTES // (4 * head.weight.shape[0]))
        # per sequence, its rows pick the GEMM's blocking and the vocabulary chunk
        rows = [(h[b], tgt[b]) for b in range(B)] if per_sequence else [(h.reshape(-1, H), tgt.reshape(-1))]
        parts = [self._head_nll(x[i:i + chunk], head.weight, t[i:i + chunk])
                 for x, t in rows for i in range(0, x.shape[0], chunk)]
        return torch.cat(parts).view(B, Tm1)

    def _head_nll(self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h [N, H] -> NLL [N] under the LM head: in the low dtype when its copy is swapped in, over the MKL-packed
        head once it is packed for N rows, else ``ops.token_nll``. The first call on a new packing is checked against
        ``ops.token_nll`` bit for bit (a head whose packed GEMM rounds otherwise is never packed again), so packing
        never changes a value."""
        if self.lowp is not None and weight.dtype == self.lowp.dtype:
            return ops.token_nll_lowp(h, weight, targets)
        packed = self._packed_head(weight, h.shape[0])
        if packed is None:
            return ops.token_nll(h, weight, targets)
        nll = ops.token_nll_packed(h, packed, targets)
        if not self._pack_checked:
            self._pack_checked = True
            plain = ops.token_nll(h, weight, targets)
            if not torch.equal(nll, plain):
                self._packed = None
                self.head_packing = (f"MKL's packed GEMM rounds this head ({tuple(weight.shape)}, {h.shape[0]} rows) "
                                     f"unlike the plain one")
                return plain
        return nll

    def _packed_head(self, weight: torch.Tensor, rows: int) -> Optional[ops.PackedHead]:
        """The head packed for ``rows`` rows (CPU float32, MKL, kernels on), made after ``PACK_HEAD_AFTER`` calls of
        that shape; None before, and where it cannot be (``head_packing`` says why)."""
        if self.head_packing is not None or not ops.kernels_enabled():
            return None
        p = self._packed
        if p is not None and p.current(weight, rows):
            return p
        if p is not None or (self._pack_calls and rows != self._pack_rows):  # weight edited or shape changed
            self._packed, self._pack_calls = None, 0
        self._pack_rows = rows
        self._pack_calls += 1
        if self._pack_calls <= self.PACK_HEAD_AFTER:
            return None
        self.head_packing = over_budget("the packed LM head needs", weight.numel() * 4, auto_score_bytes(weight.device))
        if self.head_packing:
            return None
        self._packed, self._pack_checked = ops.PackedHead(weight, rows), False
        return self._packed

    def head_stats(self) -> dict:
        """How the LM head's NLL is computed: ``path`` (``packed``: MKL-packed chunks, ``chunked``: ``ops.token_nll``,
        ``full forward``: the model's logits), ``packed_bytes``, and ``not_packed``: why it is not packed."""
        if not self.fused:
            return {"path": "full forward"}
        out: dict = {"path": "packed" if self._packed is not None else "chunked"}
        if self._packed is not None:
            out["packed_bytes"] = self._packed.nbytes
        if self.head_packing is not None:
            out["not_packed"] = self.head_packing
        return out

    def _check_fused(self) -> bool:
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if not isinstance(head, nn.Linear) or head.bias is not None or offloaded(head):
            return False
        if getattr(self.model, "base_model", None) is None or self.model.base_model is self.model:
            return False
        self._head = head
        w = head.weight
        if w.device.type != "cpu" or w.dtype != torch.float32 or self.dtype is not None:
            self.head_packing = "only a float32 CPU head is packed"
        elif not ops.mkl_packing_available():
            self.head_packing = "this torch has no MKL packed GEMM"
        probe = self.ids[:1, : min(self.T, 64)]
        try:
            with torch.no_grad():
                a = self._token_nll_full(probe)
                b = self._token_nll_fused(probe)
        except (AttributeError, TypeError, ValueError, NotImplementedError):  # backbone API differs: full path
            return False
        return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-3))

    def _token_nll(self, ids: torch.Tensor, per_sequence: bool = False) -> torch.Tensor:
        """ids [B, T] -> token NLL [B, T-1] (``per_sequence``, CPU: each sequence's values bit-identical to its own
        forward's, ``SequenceExact``)."""
        between_forwards()
        self.forwards += 1
        exact = per_sequence and self.seq_exact is not None and ids.shape[0] > 1
        with autocast(self.model, self.dtype), (self.lowp.swapped() if self.lowp else contextlib.nullcontext()), \
                (self.seq_exact.active() if exact else contextlib.nullcontext()):
            return self._token_nll_fused(ids, exact) if self.fused else self._token_nll_full(ids)

    def _masked_nll(self, bmask: BatchedMask, ns: Sequence[int], windows: Sequence[int],
                    start: Optional[int] = None) -> torch.Tensor:
        """Token NLL [B, T-1] of window ``windows[b]`` with prefix ``ns[b]`` of ``bmask`` set, each element as its own
        forward computes it on CPU (incremental when on, from layer ``start`` when given; the first such forward is
        self-checked from the middle layer)."""
        ids = self.ids[list(windows)]
        cache = self.cache
        if cache is None:
            return self._token_nll(ids, per_sequence=True)
        with cache.forward(bmask.ranking, ns, windows, start=start):
            nll = self._token_nll(ids, per_sequence=True)
        if cache.active and not cache.checked:  # the elements now cached, again from the middle layer
            keep = list(cache.keepers(ns, windows).values())
            sub_ns, sub_w = [ns[j] for j in keep], [windows[j] for j in keep]
            bmask.set_prefixes(sub_ns)
            with cache.forward(bmask.ranking, sub_ns, sub_w, start=max(1, len(cache.stack) // 2)):
                again = self._token_nll(self.ids[sub_w], per_sequence=True)
            cache.check(nll[keep], again)
        return nll

    def _jobs_nll(self, bmask: Optional[BatchedMask], ns: Sequence[int], jobs: Sequence[Tuple[int, int]],
                  start: Optional[int] = None) -> torch.Tensor:
        """Token NLL [len(jobs), T-1] of one forward: job (b, w) is prefix ``ns[b]`` on window ``w`` (no mask when
        ``bmask`` is None; ``start``: ``_masked_nll``'s)."""
        windows = [w for _, w in jobs]
        if bmask is None:
            return self._token_nll(self.ids[windows])
        bmask.set_prefixes([ns[b] for b, _ in jobs])
        try:
            return self._masked_nll(bmask, [ns[b] for b, _ in jobs], windows, start)
        finally:
            bmask.clear()

    @property
    def _live_cache(self) -> Optional[PrefixCache]:
        """The layer cache when it is on and has not fallen back."""
        return self.cache if self.cache is not None and self.cache.active else None

    def _plan(self, bmask: Optional[BatchedMask], ns: Sequence[int], jobs: List[Tuple[int, int]],
              per_batch: int) -> List[List[Tuple[int, int]]]:
        """Jobs grouped into forwards of at most ``per_batch``. GPU (a forward of many costs about one of one) and the
        unmasked model: in order. CPU: ``CPU_SHARED_PREFIXES`` consecutive jobs share a forward when that runs fewer
        layer-rows than their own forwards would (from their first changed layers, ``CPU_SHARED_ROW_COST``), every
        other job (and every job before ``CPU_SHARE_AFTER``) runs alone."""
        if bmask is None or self.seq_exact is None:
            return [jobs[i:i + per_batch] for i in range(0, len(jobs), per_batch)]
        size = min(self.CPU_SHARED_PREFIXES, per_batch)
        if size < 2 or self.masked_jobs < self.CPU_SHARE_AFTER or (size, torch.get_num_threads()) in self.not_shared:
            return [[j] for j in jobs]
        cache = self._live_cache
        L = len(cache.stack) if cache is not None else 1
        prev: dict = {}  # window -> prefix of its previous job (then its cached reference)

        def first_changed(b: int, w: int) -> int:
            if cache is None:
                return 0
            if w in prev:
                return cache.changed_layer(bmask.ranking, prev[w], ns[b])
            return cache.start_layer(bmask.ranking, [ns[b]], [w])

        groups: List[List[Tuple[int, int]]] = []
        i = 0
        while i < len(jobs):
            saved = dict(prev)
            firsts = []
            for b, w in jobs[i:i + size]:
                firsts.append(first_changed(b, w))
                prev[w] = ns[b]
            shared_rows = size * (L - min(firsts, default=0)) * self.CPU_SHARED_ROW_COST
            if len(firsts) == size and shared_rows <= sum(L - f for f in firsts):
                groups.append(jobs[i:i + size])
                i += size
                continue
            prev = saved
            b, w = jobs[i]
            prev[w] = ns[b]
            groups.append([jobs[i]])
            i += 1
        return groups

    def _forward_jobs(self, bmask: Optional[BatchedMask], ns: Sequence[int],
                      jobs: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """``_jobs_nll`` of a forward planned by ``_plan``. CPU, several prefixes: shared; checked (each prefix again
        alone from the same start layer, those values kept) when that size has not yet reproduced them on every layer
        signature the forward runs; a size that did not, or took over ``CPU_SHARED_MAX_RATIO`` of their time, is not
        shared again. A kernel's path depends on the shape, not the values, so one check answers for a size on a
        kind of layer."""
        if len(jobs) == 1 or bmask is None or self.seq_exact is None:
            return self._jobs_nll(bmask, ns, jobs)
        size = (len(jobs), torch.get_num_threads())
        if size in self.not_shared:  # found out earlier in this call's plan
            return torch.cat([self._jobs_nll(bmask, ns, [job]) for job in jobs])
        cache = self._live_cache
        start = cache.start_layer(bmask.ranking, [ns[b] for b, _ in jobs], [w for _, w in jobs]) if cache else None
        runs = frozenset(cache.signatures[start:]) if cache else frozenset(["every layer"])
        t0, checks = time.perf_counter(), self.seq_exact.check_seconds
        nll = self._jobs_nll(bmask, ns, jobs, start=start)
        if runs <= self.batch_exact.get(size, frozenset()):
            self.shared_forwards += 1
            return nll
        # each prefix alone from the same layer: below it every prefix of the forward has the cached reference's
        # outputs; the cache ends holding the last one's, as after one forward per prefix
        t1 = time.perf_counter()
        alone = torch.cat([self._jobs_nll(bmask, ns, [job], start=start) for job in jobs])
        shared_s = t1 - t0 - (self.seq_exact.check_seconds - checks)  # without SequenceExact's first-call checks
        alone_s = time.perf_counter() - t1
        if not torch.equal(nll, alone):
            self.not_shared[size] = f"a shared forward of {size[0]} prefixes did not reproduce their own forwards"
        elif shared_s > self.CPU_SHARED_MAX_RATIO * alone_s:
            self.not_shared[size] = (f"a shared forward of {size[0]} prefixes took {shared_s:.3f} s, their own "
                                     f"forwards {alone_s:.3f} s")
        else:
            self.batch_exact[size] = runs | self.batch_exact.get(size, frozenset())
        return alone

    def batch_stats(self) -> dict:
        """CPU forwards shared by several prefixes (whose values were used), the sizes checked to reproduce each
        prefix's own forward, why a size is not shared, and the Linear call shapes computed sequence by sequence
        (``SequenceExact``)."""
        if self.seq_exact is None:
            return {}
        out: dict = {"forwards": self.shared_forwards, "sizes_exact": sorted(b for b, _ in self.batch_exact)}
        out.update(self.seq_exact.stats())
        if self.not_shared:
            out["not_shared"] = "; ".join(self.not_shared.values())
        return out

    # -- public -----------------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, masked: str = "") -> float:
        """Mean NLL over all windows of the model as it is (``masked``: what is masked in place, for the message
        when the loss is not finite; empty: the clean model, and the message names the first non-finite module)."""
        v = self.nll_prefixes(None, [0])[0]
        if not math.isfinite(v):
            if not masked:
                raise nonfinite_error(self.model, self.ids, v, self.what)
            raise NonFiniteError(f"the model's loss on {self.what} with {masked} masked is {v} (not finite)")
        return v

    @torch.no_grad()
    def nll_prefixes(self, bmask: Optional[BatchedMask], ns: Sequence[int], check_finite: bool = True) -> List[float]:
        """Mean NLL with the first ``ns[i]`` ranked channels of ``bmask`` masked (one value per n), batching
        prefixes x windows per forward (``check_finite=False``: a value that is not finite is returned)."""
        jobs = [(b, w) for b in range(len(ns)) for w in range(self.W)]
        per_batch = max(1, self.max_batch_tokens // self.T)
        sums = [0.0] * len(ns)
        plan = self._plan(bmask, ns, jobs, per_batch)
        self.masked_jobs += len(jobs) if bmask is not None else 0
        for chunk in plan:
            nll = self._forward_jobs(bmask, ns, chunk)  # [B, T-1]
            row = nll.double().mean(1).tolist()
            for (b, _), v in zip(chunk, row):
                sums[b] += v
        means = [s / self.W for s in sums]
        for n, v in zip(ns, means):
            if check_finite and bmask is not None and n > 0 and not math.isfinite(v):
                raise NonFiniteError(f"the model's loss on {self.what} with the first {n} ranked channel(s) masked is "
                                     f"{v} (not finite)")
        return means

    @torch.no_grad()
    def nll_samples(self, samples: Sequence[torch.Tensor], masked: str = "") -> Tuple[float, int]:
        """Token-weighted mean NLL of variable-length samples (ids [T_i], T_i >= 2) under the model as it is:
        the sum of every predicted token's NLL over the number of predicted tokens. Samples are sorted by length,
        right-padded and batched under ``max_batch_tokens``; a causal LM never lets padding reach earlier positions,
        and padded positions are not counted. -> (mean NLL, predicted tokens). A loss that is not finite raises
        ``NonFiniteError`` (``masked``: what is masked in place, for the message)."""
        order = sorted(range(len(samples)), key=lambda i: -samples[i].numel())
        total, count, i = 0.0, 0, 0
        while i < len(order):
            T = int(samples[order[i]].numel())  # longest of this batch
            group = [samples[j] for j in order[i:i + max(1, self.max_batch_tokens // T)]]
            i += len(group)
            ids = torch.zeros(len(group), T, dtype=torch.long)  # [B, T], right-padded with token 0
            valid = torch.zeros(len(group), T - 1, dtype=torch.bool)  # [B, T-1] predicted positions
            for b, s in enumerate(group):
                ids[b, :s.numel()] = s
                valid[b, :s.numel() - 1] = True
            nll = self._token_nll(ids)  # [B, T-1]
            total += float(nll.double()[valid.to(nll.device)].sum())
            count += int(valid.sum())
        v = total / count
        if not math.isfinite(v):
            raise NonFiniteError(f"the model's loss on {self.what}{f' with {masked} masked' if masked else ''} is "
                                 f"{v} (not finite)")
        return v, count
