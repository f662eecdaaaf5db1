"""Compare the authors' outputs with ours (figures for RESULTS.md). Usage: compare.py OUT_DIR [SUFFIX]"""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
SUF = sys.argv[2] if len(sys.argv) > 2 else ""


def timing(name):
    txt = (out / f"{name}.time").read_text()
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", txt).group(1).strip()
    parts = [float(x) for x in wall.split(":")]
    secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1))
    return secs, rss / 2 ** 20


s1 = json.loads((out / "theirs_stage1.json").read_text())
s2 = json.loads((out / f"theirs_stage2{SUF}.json").read_text())
entries = s1["top_neurons"]
names = [f"{e['layer_name']}:{e['hidden_idx']}" for e in entries]
distinct, first_at = [], {}
for i, n in enumerate(names):
    if n not in first_at:
        first_at[n] = i
        distinct.append(n)
modules = sorted({e["layer_name"] for e in entries})
print(f"theirs: {s1['total_neurons']} entries ranked, {len(entries)} saved, {len(distinct)} distinct channels in them, "
      f"{len(modules)} modules among the saved entries")
log = (out / "theirs_stage1.log").read_text()
m = re.search(r"Collected baseline activations from (\d+) modules", log)
print(f"theirs: modules with a tensor output hooked: {m.group(1) if m else '?'}")
steps = s2["masking_steps"]
final = s2["final_masked_neurons"]
their_set = list(dict.fromkeys(f"{e['layer_name']}:{e['hidden_idx']}" for e in final))
print(f"theirs: stop {s2['stopping_reason']}, {len(steps)} steps, final {len(final)} entries = {len(their_set)} "
      f"distinct channels, last log10 ratio {steps[-1]['magnitude_increase']:.4f}")
# their curve per distinct-channel count: step n masks entries[:n]
their_curve = {}
for st in steps:
    n = st["neurons_masked"]
    d = len(set(names[:n]))
    their_curve.setdefault(d, (n, st["magnitude_increase"]))
variants = [s + d for s in ("first", "linear", "bisect") for d in ("", "_bfloat16", "_float16")]
for strat in variants:
    p = out / f"ours_{strat}{SUF}.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    ours = [x["name"] for x in r["neurons"]]
    ranked = [x["name"] for x in r["top_ranked"]]
    curve = {int(n): v for n, v in r["curve"]}
    agree, diffs = 0, []
    for d, (n, v) in their_curve.items():
        if d in curve and set(ranked[:d]) == set(names[:n]) and len(ranked) >= d:
            agree += 1
            diffs.append(abs(curve[d] - v))
    t = timing(f"ours_{strat}{SUF}")
    print(f"ours {strat}: converged {r['converged']}, {len(ours)} channels, log10 {r['log10_ratio']}, "
          f"stage2 evaluations {r['stats'].get('stage2_evaluations')}, forwards {r['stats'].get('stage2_forwards')}, "
          f"timings {({k: round(v, 2) for k, v in r['timings'].items()})}, wall {t[0]:.1f} s, peak RSS {t[1]:.2f} GB")
    print(f"   modules scanned (ours, scope paper): {r['stats'].get('n_targets')}, channels {r['stats'].get('n_channels')}")
    inter = len(set(ours) & set(their_set))
    print(f"   set vs theirs: |ours|={len(ours)} |theirs|={len(their_set)} common={inter} equal={set(ours) == set(their_set)}")
    head = min(50, len(distinct), len(ranked))
    print(f"   top-{head} distinct channels overlap: {len(set(ranked[:head]) & set(distinct[:head]))}/{head}")
    print(f"   curve points with the same masked set: {agree}; max |diff| {max(diffs) if diffs else float('nan'):.2e}")
    if "stage1_certified" in r["stats"]:
        c = r["stats"]["stage1_certified"]
        why = f", fallback: {c['fallback']}" if "fallback" in c else ""
        print(f"   stage1 {c['dtype']}: certified {c['certified']} (length {c.get('length')}, margin "
              f"{c.get('margin')}, calibration {c.get('calibration_s', 0):.2f} s{why})")
for name in ("theirs_stage1", f"theirs_stage2{SUF}"):
    t = timing(name)
    print(f"{name}: wall {t[0]:.1f} s, peak RSS {t[1]:.2f} GB")
