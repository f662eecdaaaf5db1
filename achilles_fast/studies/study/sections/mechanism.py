"""Section 5, mechanism (beyond the paper): how the critical neurons relate to massive activations (Sun et al. 2024),
super weights (Yu et al. 2024) and attention sinks, and whether their value or only their presence matters.

On the evaluation text, for each critical channel c of module m:
- activation: a_t = f_m(x)[t, c] over positions t; max |a|, the token at the peak t*, the ratio of max |a| to the
  channel's median |a| (massive when max |a| > 100 and the ratio > 1000);
- super weight (modules with a weight matrix): the input coordinate j* with the largest |W[c, j] h[t*, j]| at the
  peak (h: the module's input), the weight W[c, j*] and the share of the output (without bias) it carries;
- attention sinks: the attention of each layer on the first token (mean over heads and query positions 1..T-1),
  clean and with the set masked, with eager attention switched on for this step only;
- zero- vs mean-ablation: the log10 PPL ratio with the channels zeroed and with them replaced by their clean mean
  over positions.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ....method.masking import masked
from ....method.perplexity import log10_ratio
from ....method.ranking import Ranking
from ....models.devices import embedding_device
from ....models.neurons import NeuronIndex
from ....models.targets import Target
from ....utils import eval_mode
from ..context import StudyContext
from ..section import Section, figure, fmt, register, table, verdict
from ...plots import canvas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MASSIVE_ABS, MASSIVE_RATIO = 100.0, 1000.0
DOMINANT = 0.5  # a single input coordinate carrying at least this share of the output: a super weight


class AttentionUnavailable(RuntimeError):
    """The model's attention cannot return its weights (the attention-sink step is skipped, the rest runs)."""


# ---- captures -----------------------------------------------------------------------------------------------------
def _by_target(targets: Sequence[Target], names: Sequence[str]) -> List[Tuple[Target, List[int]]]:
    """(target, channels) groups of neuron names, in scan order."""
    index = NeuronIndex(targets)
    neurons = index.resolve(names)
    out: Dict[str, List[int]] = {}
    for n in neurons:
        out.setdefault(n.module, []).append(n.channel)
    return [(t, out[t.name]) for t in targets if t.name in out]


def capture(model: nn.Module, groups: List[Tuple[Target, List[int]]], ids: torch.Tensor) -> Dict[str, Dict]:
    """One clean forward on ids [T]: per target, its output channels [T, c] and its input [T, I] (None when the
    hook sees no plain tensor input)."""
    got: Dict[str, Dict] = {}
    handles = []

    def make(t: Target, chans: List[int]):
        def hook(module, args, out):
            y = t.output(out)
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            got[t.name] = {"y": y.reshape(-1, y.shape[-1])[:, chans].detach().float().cpu(),
                           "x": None if x is None else x.reshape(-1, x.shape[-1]).detach().float().cpu()}
        return hook

    try:
        for t, chans in groups:
            handles.append(t.register_forward_hook(make(t, chans)))
        with eval_mode(model), torch.no_grad():
            model(input_ids=ids.unsqueeze(0).to(embedding_device(model)), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


def weight_row(t: Target, c: int) -> Optional[torch.Tensor]:
    """W[c, :] of a module with a weight matrix layout (Linear rows, Conv1D columns), float32 on the CPU."""
    dim = t.weight_dim
    w = getattr(t.module, "weight", None)
    if dim is None or not isinstance(w, torch.Tensor) or w.dim() != 2 or w.device.type == "meta":
        return None
    return (w[c] if dim == 0 else w[:, c]).detach().float().cpu()


def super_weight(row: torch.Tensor, h: torch.Tensor) -> Dict:
    """Input coordinate j* with the largest |W[c, j] h_j| (row [I], h [I]); its weight, input and share of the
    output sum_j W[c, j] h_j."""
    contrib = row.double() * h.double()  # [I]
    j = int(contrib.abs().argmax())
    total = float(contrib.sum())
    return {"j": j, "weight": float(row[j]), "input": float(h[j]), "contribution": float(contrib[j]),
            "share": None if total == 0 else float(contrib[j]) / total}


def activation_stats(a: torch.Tensor) -> Dict:
    """a [T] -> max |a|, its first position, the median |a| and their ratio; massive per Sun et al.'s thresholds."""
    m = a.abs()
    t = int(m.argmax())
    peak, med = float(m[t]), float(m.median())
    ratio = None if med == 0 else peak / med
    return {"max_abs": peak, "position": t, "value": float(a[t]), "median_abs": med, "ratio": ratio,
            "massive": peak > MASSIVE_ABS and (ratio is None or ratio > MASSIVE_RATIO)}


# ---- attention sinks ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Eager attention inside the block (attention weights can be returned); the previous setting after."""
    cfg = getattr(model, "config", None)
    prev = getattr(cfg, "_attn_implementation", None)
    if prev in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    try:
        model.set_attn_implementation("eager")
    except (ValueError, NotImplementedError, ImportError) as e:
        raise AttentionUnavailable(f"eager attention is not available: {e}") from None
    try:
        yield
    finally:
        model.set_attn_implementation(prev)


def first_token_attention(model: nn.Module, ids: torch.Tensor) -> List[float]:
    """Per layer: attention on position 0, mean over heads and query positions 1..T-1, on ids [T]."""
    if ids.numel() < 2:
        raise AttentionUnavailable("need at least 2 tokens")
    try:
        with eager_attention(model), eval_mode(model), torch.no_grad():
            out = model(input_ids=ids.unsqueeze(0).to(embedding_device(model)), output_attentions=True,
                        use_cache=False)
    except TypeError as e:  # forward without output_attentions
        raise AttentionUnavailable(f"the forward does not take output_attentions ({e})") from None
    atts = getattr(out, "attentions", None)
    if not atts or any(a is None for a in atts):
        raise AttentionUnavailable("the model returned no attention weights with output_attentions=True")
    return [float(a[0, :, 1:, 0].float().mean()) for a in atts]  # a [B, heads, T, T]


# ---- ablations ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def mean_ablated(groups: List[Tuple[Target, List[int]]], means: Dict[str, torch.Tensor]):
    """Replace the channels of each target by constants (means[target] [c]) at every position, by forward hooks."""
    handles = []

    def make(t: Target, chans: List[int]):
        idx_cpu = torch.tensor(chans, dtype=torch.long)

        def hook(module, args, out):
            y = t.output(out)
            y2 = y.clone()
            y2[..., idx_cpu.to(y.device)] = means[t.name].to(y.device, y.dtype)
            return t.with_output(out, y2)
        return hook

    try:
        for t, chans in groups:
            handles.append(t.register_forward_hook(make(t, chans)))
        yield
    finally:
        for h in handles:
            h.remove()


def _token(tokenizer, i: int) -> str:
    """The text of token id ``i`` (the id itself for tokenizers without ``decode``)."""
    decode = getattr(tokenizer, "decode", None)
    return decode([i]) if decode is not None else f"<{i}>"


@register
class Mechanism(Section):
    name = "mechanism"
    title = "Mechanism (beyond the paper)"
    claim = ("Open in the paper: how the critical neurons relate to massive activations (Sun et al. 2024), super "
             "weights (Yu et al. 2024) and attention sinks, and whether their value matters or only that they are on.")
    order = 50

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        names = r.names
        if not names:
            return self.block(["The search did not converge: there is no critical set to examine."],
                              [verdict("critical neurons are massive activations", None, "no critical set")])
        groups = _by_target(ctx.targets, names)
        ids = ctx.eval_ids
        got = capture(ctx.model, groups, ids)
        neurons, means, profiles = [], {}, {}
        for t, chans in groups:
            y, x = got[t.name]["y"], got[t.name]["x"]  # [T, c], [T, I]
            means[t.name] = y.mean(0)
            for j, c in enumerate(chans):
                st = activation_stats(y[:, j])
                st["token"] = _token(ctx.tokenizer, int(ids[st["position"]]))
                row = weight_row(t, c)
                sw = None
                if row is not None and x is not None and x.shape[-1] == row.numel():
                    sw = super_weight(row, x[st["position"]])
                neurons.append({"neuron": f"{t.name}:{c}", "layer": t.layer, "kind": t.kind, **st, "super_weight": sw})
                profiles[f"{t.name}:{c}"] = y[:, j].abs().tolist()
        order = {n: i for i, n in enumerate(names)}
        neurons.sort(key=lambda d: order[d["neuron"]])
        ranking = Ranking.from_neurons(ctx.targets, names)
        zero = ctx.masked_ratio(ranking)
        ev = ctx.evaluator()
        with eval_mode(ctx.model), torch.no_grad(), mean_ablated(groups, means):
            mean = log10_ratio(ev.nll(), ctx.clean_nll)
        att: Dict = {}
        try:
            clean_att = first_token_attention(ctx.model, ids)
            with masked(ctx.model, names, targets=ctx.targets):
                masked_att = first_token_attention(ctx.model, ids)
            att = {"clean": clean_att, "masked": masked_att}
        except AttentionUnavailable as e:
            att = {"unavailable": str(e)}
        profiles = {d["neuron"]: profiles[d["neuron"]] for d in neurons[:8]}  # for the figure
        return self._block(ctx, r.epsilon, neurons, zero, mean, att, profiles)

    def _block(self, ctx: StudyContext, eps: float, neurons: List[Dict], zero: float, mean: float, att: Dict,
               profiles: Dict[str, List[float]]) -> Dict:
        n = len(neurons)
        massive = [d for d in neurons if d["massive"]]
        sws = [d for d in neurons if d["super_weight"] is not None]
        dominant = [d for d in sws if d["super_weight"]["share"] is not None and d["super_weight"]["share"] >= DOMINANT]
        v = [verdict(f"the critical channels carry massive activations (max |a| > {MASSIVE_ABS:g} and > "
                     f"{MASSIVE_RATIO:g}x the channel's median), at least half of them", 2 * len(massive) >= n,
                     f"{len(massive)} of {n} massive; " + "; ".join(
                         f"{d['neuron']}: max |a| {fmt(d['max_abs'], 1)} at token {d['position']} {d['token']!r}, "
                         f"{fmt(d['ratio'], 0)}x median" for d in neurons[:5]))]
        if sws:
            v.append(verdict(f"each peak comes through one input coordinate (a super weight carrying >= "
                             f"{DOMINANT:.0%} of the output), at least half of them", 2 * len(dominant) >= len(sws),
                             f"{len(dominant)} of {len(sws)}; " + "; ".join(
                                 f"{d['neuron']}: j = {d['super_weight']['j']}, W = "
                                 f"{fmt(d['super_weight']['weight'], 4)}, h = {fmt(d['super_weight']['input'], 2)}, "
                                 f"share {fmt(d['super_weight']['share'], 2)}" for d in sws[:5])))
        else:
            v.append(verdict("each peak comes through one input coordinate (a super weight)", None,
                             "no critical module with a readable weight matrix and input"))
        if "unavailable" in att:
            v.append(verdict("masking the set removes the attention sinks", None,
                             f"attention weights unavailable: {att['unavailable']}"))
        else:
            c, m = att["clean"], att["masked"]
            mc, mm = sum(c) / len(c), sum(m) / len(m)
            v.append(verdict("masking the set removes the attention sinks (mean first-token attention falls by more "
                             "than half)", mm < 0.5 * mc,
                             f"mean over {len(c)} layers: clean {fmt(mc)}, masked {fmt(mm)}; largest clean "
                             f"{fmt(max(c))} (layer {c.index(max(c))})"))
        v.append(verdict("only the channel's constant level matters: zero-ablation collapses, mean-ablation is "
                         "harmless",
                         zero >= eps and mean < eps, f"log10 ratio zeroed {fmt(zero)}, mean-ablated {fmt(mean)} "
                         f"(epsilon {eps:g})"))
        rows = []
        for d in neurons:
            sw = d["super_weight"] or {}
            rows.append([d["neuron"], fmt(d["max_abs"], 2), f"{d['position']} {d['token']!r}", fmt(d["median_abs"], 4),
                         fmt(d["ratio"], 0), "yes" if d["massive"] else "no", sw.get("j", "-"),
                         fmt(sw.get("weight"), 4), fmt(sw.get("input"), 2), fmt(sw.get("share"), 2)])
        tables = [table("critical channels on the evaluation text",
                        ["neuron", "max |a|", "peak token", "median |a|", "ratio", "massive", "j*", "W[c, j*]",
                         "h[j*]", "share"], rows[:50])]
        figs = [figure("mechanism_activations", "|activation| of the critical channels over positions (first 8 "
                       "neurons; log scale).")]
        if "unavailable" not in att:
            figs.append(figure("mechanism_attention", "Attention on the first token per layer, clean and with the "
                               "critical set masked."))
        measured = [f"One clean forward on the {int(ctx.eval_ids.numel())} evaluation tokens with hooks on the "
                    f"{n} critical channel(s); super weights at each channel's peak position; attention with eager "
                    "attention for this step only (per-layer values in study.json); zero- and mean-ablation on the "
                    "evaluation text."]
        if "unavailable" not in att:
            drops = sorted(range(len(att["clean"])), key=lambda i: att["masked"][i] - att["clean"][i])[:3]
            measured.append("Largest drops of first-token attention: " + ", ".join(
                f"layer {i} {fmt(att['clean'][i])} -> {fmt(att['masked'][i])}" for i in drops) + ".")
        return self.block(measured, v, tables=tables, figures=figs,
                          data={"neurons": neurons, "zero_ablation": zero, "mean_ablation": mean, "attention": att,
                                "epsilon": eps, "activations": profiles})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        d = data
        if not d:
            return []
        out = []
        fig = canvas((6.4, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        for name, ys in d["activations"].items():
            ax.plot(range(len(ys)), [max(y, 1e-6) for y in ys], lw=1, label=name.replace(".mlp.", " mlp."),
                    gid=f"act:{name}")
        ax.set_yscale("log")
        ax.set_xlabel("position (evaluation text)")
        ax.set_ylabel("|activation|")
        ax.set_title("critical channels over positions", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        out.append(("mechanism_activations", fig))
        att = d["attention"]
        if "unavailable" not in att:
            fig = canvas((6.4, 3.6))
            ax = fig.add_subplot(1, 1, 1)
            ax.plot(att["clean"], marker="o", ms=3, label="clean", gid="att:clean")
            ax.plot(att["masked"], marker="s", ms=3, label="critical set masked", gid="att:masked")
            ax.set_xlabel("layer")
            ax.set_ylabel("attention on the first token")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title("attention sinks", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            out.append(("mechanism_attention", fig))
        return out
