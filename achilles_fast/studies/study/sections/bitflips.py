"""Section 9, bit flips: single-bit faults in the int8 model, aimed at the critical set against random.

The model is stored as int8 (8-bit per-channel RTN of every decoder-block Linear weight; ``compression.bitflips``).
A greedy search over the int8 values producing the critical channels (bit 7 first, the inputs with the largest
activation norm on the scoring text first) finds how few single-bit flips raise log10 PPL by epsilon over the int8
model; the control flips the same bits at random positions (``flip_trials`` draws). Every flip is recorded (tensor,
index, bit, code and value before / after) and replayed once (``replay_flips``) to confirm its number. The weights
are restored bit-exact afterwards.
"""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Dict, List, Tuple

from ....method.perplexity import log10_ratio
from ....utils import progress_bar
from ...compression.activations import input_norms
from ...compression.bitflips import critical_candidates, greedy_flips, int8_model, random_trials, replay_flips
from ...plots import epsilon_line
from ...compression.protect import protect_list
from ...compression.weights import block_weights
from ..compressed import logs, new_figure, nll_now
from ..context import StudyContext
from ..section import Param, Section, StudyError, figure, fmt, positive_int, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CLAIM = ("A fault in the critical set is fatal: a few single-bit flips in the int8 weights that produce the critical "
         "channels collapse the model (AttentionBreaker: 3 flips take an 8-bit Llama-3-8B from WikiText PPL 12.6 to "
         "4.7e5), while as many flips at random positions do nothing.")
FLOAT_NOTE = ("Floats are not searched: flipping the top exponent bit of any float32 / bfloat16 weight multiplies it "
              "by about 2^128 or makes it Inf/NaN, which is fatal wherever it lands, so there is nothing to find. "
              "An int8 code stays within [-128, 127] times its channel's scale, so where a flip lands decides "
              "whether it matters.")
RANDOM_RARE = 0.05  # "random flips do nothing": fewer than this fraction of the draws reach epsilon
MIN_FLIP_TRIALS = 100  # the random control: at least this many draws


def check_trials(v) -> None:
    positive_int("flip_trials")(v)
    if v < MIN_FLIP_TRIALS:
        raise StudyError(f"flip_trials must be >= {MIN_FLIP_TRIALS} (random bit-flip draws), got {v}")


def _r(v: float):
    return None if not math.isfinite(v) else v


@register
class Bitflips(Section):
    name = "bitflips"
    title = "Bit flips"
    claim = CLAIM
    order = 90
    params = (
        Param("flip_max", 10, "bitflips: most flips the greedy search commits", quick=4,
              check=positive_int("flip_max"), flag="--flip-max", kind=int),
        Param("flip_candidates", 32, "bitflips: candidate flips tried per greedy step", quick=8,
              check=positive_int("flip_candidates"), flag="--flip-candidates", kind=int),
        Param("flip_trials", MIN_FLIP_TRIALS, f"bitflips: random control draws (>= {MIN_FLIP_TRIALS})",
              check=check_trials, flag="--flip-trials", kind=int),
    )

    def key_params(self, ctx: StudyContext) -> Dict:
        return dict(super().key_params(ctx), seed=ctx.config.seed)

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        eps = r.epsilon
        c1 = "a few single-bit flips in the critical set's int8 weights raise log10 PPL by >= epsilon"
        if not r.names:
            return self.block(["The search did not converge: there is no critical set to aim at.", FLOAT_NOTE],
                              [verdict(c1, None, "no critical set")])
        crit = protect_list(ctx.model, r.names, discover=ctx.config.discover)
        weights = block_weights(ctx.model)
        norms = input_norms(ctx.model, ctx.ids, weights)
        clean = ctx.clean_nll
        with int8_model(ctx.model) as st:
            base = nll_now(ctx)  # the int8 model, no flip
            if not math.isfinite(base):
                raise ValueError("the int8 model's loss is not finite: cannot measure bit flips against it")

            def evaluate() -> float:
                return log10_ratio(nll_now(ctx), base)

            cands = critical_candidates(st, crit, norms)
            budget = p.flip_max * p.flip_candidates + p.flip_trials
            with progress_bar(budget, "Bit flips: evaluations", "eval", ctx.progress) as bar:
                tick = (lambda: bar.update(1)) if bar is not None else None
                found = greedy_flips(st, cands, evaluate, eps, p.flip_max, p.flip_candidates, tick)
                for f in reversed(found.flips):  # back to the int8 model for the control
                    st.undo(f)
                bits = [f.bit for f in found.flips] or [7]
                trials = random_trials(st, bits, p.flip_trials, evaluate, seed=ctx.config.seed, progress=tick)
        replayed = None
        if found.flips:
            with replay_flips(ctx.model, found.flips):
                replayed = _r(log10_ratio(nll_now(ctx), base))
        ratios = [t["log10_ratio"] for t in trials]
        reach = sum(x >= eps for x in ratios)
        finite = [x for x in ratios if math.isfinite(x)]
        n = len(found.flips)
        measured = [
            f"int8 model: 8-bit symmetric per-channel RTN of every Linear weight in the decoder blocks, log10 PPL "
            f"{fmt(logs(base, clean)['log10_ppl'])} (log10 ratio {fmt(log10_ratio(base, clean))} to the float "
            "model). "
            f"Greedy search over the {crit.count():,} int8 values producing the {len(r.names)} critical neuron(s) "
            f"({len(cands):,} candidate flips: bit 7 first, largest input activation first), {p.flip_candidates} "
            f"candidates per step, at most {p.flip_max} flips: {found.evaluations} evaluations.",
            f"Control: {p.flip_trials} draws of {len(bits)} flip(s) of the same bit(s) at random positions among all "
            f"{sum(c.numel() for c in st.codes.values()):,} stored int8 values.",
            FLOAT_NOTE]
        if found.reached:
            v1 = verdict(c1, True, f"{n} flip(s) raise log10 PPL by {fmt(found.ratios[-1])} >= epsilon = {eps:g} "
                         f"(replayed: {fmt(replayed)})")
        else:
            v1 = verdict(c1, False, f"{n} committed flip(s) reach log10 ratio "
                         f"{fmt(found.ratios[-1] if found.ratios else 0.0)} < epsilon = {eps:g} within {p.flip_max} "
                         f"flips ({found.evaluations} evaluations)")
        v2 = verdict(f"as many random flips do nothing (fewer than {100 * RANDOM_RARE:g}% of the draws reach "
                     "epsilon)", reach < RANDOM_RARE * len(ratios),
                     f"{reach} of {len(ratios)} random draws of {len(bits)} flip(s) reach epsilon; median log10 "
                     f"ratio {fmt(statistics.median(finite) if finite else None)}, max {fmt(max(ratios))}")
        flip_rows = [[i + 1, f.tensor, str(list(f.index)), f.bit, f"{f.before} -> {f.after}",
                      f"{f.weight_before:.4g} -> {f.weight_after:.4g}", fmt(_r(x))]
                     for i, (f, x) in enumerate(zip(found.flips, found.ratios))]
        tables = [table("greedy flips in the critical set's int8 weights (replayable)",
                        ["#", "tensor", "index", "bit", "code", "weight", "log10 ratio after"], flip_rows),
                  table("random control", ["draws", "flips per draw", "reaching epsilon", "median log10 ratio",
                                           "max log10 ratio"],
                        [[len(ratios), len(bits), reach, fmt(statistics.median(finite) if finite else None),
                          fmt(max(finite) if finite else None)]])]
        data = {"epsilon": eps, "int8_log10_ppl": logs(base, clean)["log10_ppl"],
                "int8_log10_ratio_to_float": log10_ratio(base, clean), "flips": [f.to_dict() for f in found.flips],
                "ratios": [_r(x) for x in found.ratios], "reached": found.reached, "evaluations": found.evaluations,
                "replayed_log10_ratio": replayed, "candidates": len(cands),
                "random": [{**t, "log10_ratio": _r(t["log10_ratio"])} for t in trials], "random_reaching": reach,
                "critical": r.names}
        return self.block(measured, [v1, v2], tables=tables, data=data,
                          figures=[figure("bitflips", "log10 PPL ratio to the int8 model after each greedy flip in "
                                          "the critical set, and of each random draw of as many flips; epsilon "
                                          "dashed.")])

    def figures(self, d: Dict) -> List[Tuple[str, Figure]]:
        if "flips" not in d:
            return []
        eps = d["epsilon"]
        vals = [x for x in d["ratios"] + [t["log10_ratio"] for t in d["random"]] if x is not None]
        top = max(vals + [eps]) * 1.1 + 1e-3
        fig = new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ys = [0.0] + [top if x is None else x for x in d["ratios"]]
        ax.plot(range(len(ys)), ys, marker="o", color="tab:red", label="greedy, critical set", gid="greedy")
        n = max(1, len(d["flips"]))
        rs = [top if t["log10_ratio"] is None else t["log10_ratio"] for t in d["random"]]
        ax.scatter([n + 0.15 * ((i % 7) - 3) / 3 for i in range(len(rs))], rs, s=10, alpha=0.5, color="tab:gray",
                   label=f"random ({len(rs)} draws)", gid="random")
        epsilon_line(ax, eps)
        ax.set_xlabel("single-bit flips")
        ax.set_ylabel("log10(PPL flipped / PPL int8)")
        ax.set_title("int8 bit flips: critical set vs random positions", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return [("bitflips", fig)]
