"""How far ``stage1_dtype``'s calibration is from the error it bounds (``method/certify.py``): full-K Stage 1 scores
of every (module, position, channel) entry in float32 and in a low dtype, against the calibration of 1, 2 and 4
samples; then how many leading channels the margin (SAFETY x the 2-sample calibration) certifies. Run it alone.

    python benchmarks/stage1_calibration.py --model stories --scope paper
    python benchmarks/stage1_calibration.py --model smollm2-135m --scope paper --k 100
"""
from __future__ import annotations

import argparse
import time

import torch

from achilles_fast.method import certify
from achilles_fast.method.config import FindConfig
from achilles_fast.method.stage1 import lowp_forwards, sensitivity_scores
from achilles_fast.method.text import text_ids
from achilles_fast.models.loading import load_model
from achilles_fast.models.registry import SCOPES, discover_targets

from _throughput_common import STORIES  # benchmarks/: the one path to ../shared


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="stories", help="stories (../shared's stories260K), a named default or a path")
    p.add_argument("--scope", default="paper", choices=SCOPES)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok, name = load_model(str(STORIES) if a.model == "stories" else a.model)
    ids, _ = text_ids(model, tok, None, None, FindConfig.max_tokens)
    targets = discover_targets(model, a.scope)

    def entries(k: int, dtype) -> torch.Tensor:  # every entry's full-K score, flat [sum T x C]
        with torch.no_grad(), lowp_forwards(model, dtype):
            return torch.cat([s.flatten() for s in sensitivity_scores(model, targets, ids, k=k)])

    t = time.perf_counter()
    exact, low = entries(a.k, None), entries(a.k, a.dtype)
    err = (low - exact).abs()
    print(f"# {name}, scope {a.scope}, K={a.k}, {a.dtype}, T={ids.numel()} ({time.perf_counter() - t:.1f} s)")
    print(f"full-K max entry error {err.max():.4g} at a score of {exact[err.argmax()]:.6g} (max score "
          f"{exact.max():.6g})")
    cfg = FindConfig(k=a.k, scope=a.scope, stage1_dtype=a.dtype)
    cal = {c: certify.calibration_error(model, targets, ids, cfg, samples=c) for c in (1, 2, 4)}
    for c, e in cal.items():
        print(f"calibration of {c} sample(s): {e:.4g}; full-K error / calibration {err.max() / e:.3f}")
    margin = certify.SAFETY * cal[certify.CALIBRATION_SAMPLES]
    T = int(ids.numel())
    chans = torch.cat([s.view(T, -1).amax(0) for s in torch.split(low, [T * t.num_channels for t in targets])])
    top = chans.sort(descending=True).values[:1001]
    print(f"margin {margin:.4g}; leading gaps {[round(float(g), 4) for g in (top[:-1] - top[1:])[:8]]}; "
          f"certified length {certify.certified_length(top, margin)}")


if __name__ == "__main__":
    main()
