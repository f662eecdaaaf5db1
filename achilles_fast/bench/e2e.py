"""End-to-end benchmark, side by side in one run: paper baseline vs achilles_fast (kernels on/off,
linear/bisect) vs the arithmetic floor of Stage 1.

floor = plain batched forwards over the same (K+1)*T tokens (full model, no hooks), chunked like our Stage 1.

    achilles-fast bench e2e --model smollm2-135m --k 100 --repeats 3
    achilles-fast bench e2e --random llama3-8b --device cuda --dtype bfloat16 --tokens 128

Prints a table (and writes CSV/JSON with --csv/--json). Timings are medians over --repeats after a warm-up; on a
CPU they are only meaningful relative to each other within one run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import threading
import time
from typing import Dict, List

import torch

import achilles_fast as af
from achilles_fast import ops
from achilles_fast.method.result import versions
from achilles_fast.method.budget import stage1_batch_tokens
from achilles_fast.method.stage1 import input_embeddings
from achilles_fast.method.text import tokenize

from .paper_baseline import paper_find_critical

# Shapes of real models, for random-weight timing runs (the real weights of big models are not needed to time).
RANDOM_SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


class FixedTokenizer:
    """Returns the same random token ids for any text (random-weight models have no real tokenizer)."""

    def __init__(self, n: int, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (1, n), generator=g)

    def __call__(self, text, return_tensors=None, **kw):
        return {"input_ids": self.ids.clone(), "attention_mask": torch.ones_like(self.ids)}


def random_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**RANDOM_SHAPES[shape], max_position_embeddings=4096)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype (an 8B model in fp32 is 32 GB)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak extra memory during a block (MiB): the CUDA allocator's peak, or on CPU the process's peak RSS.

    CPU: Linux resets the peak-RSS counter (VmHWM) through /proc/self/clear_refs, so nothing runs beside the timed
    code; elsewhere a sampling thread (every 20 ms, psutil) stands in, and without psutil the peak is NaN.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = float("nan")
        self.mode = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.mode = "cuda"
            return self
        try:
            self.base = _proc_status_kb("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.mode = "hwm"
        except (OSError, KeyError):
            try:
                import psutil
            except ImportError:
                return self
            self.proc = psutil.Process()
            self.base = self.peak = self.proc.memory_info().rss
            self.stop = False
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
            self.mode = "sampled"
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.mode == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.mode == "hwm":
            self.peak_mb = (_proc_status_kb("VmHWM") * 1024 - self.base) / 2**20
        elif self.mode == "sampled":
            self.stop = True
            self.thread.join()
            self.peak_mb = (self.peak - self.base) / 2**20
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_time(model, ids, k: int, max_batch_tokens=None) -> float:
    """Plain batched forwards (full model, no hooks) over (K+1)*T tokens, chunked like Stage 1."""
    emb = input_embeddings(model, ids)
    T = emb.shape[0]
    kb = max(1, min(k, stage1_batch_tokens(max_batch_tokens, emb.device) // T))
    g = torch.Generator(device=emb.device).manual_seed(0)
    xs = [emb.unsqueeze(0)] + [emb + 5.0 * torch.randn(min(kb, k - k0), *emb.shape, device=emb.device,
                                                        generator=g, dtype=emb.dtype) for k0 in range(0, k, kb)]
    _sync(emb.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in xs:
            model(inputs_embeds=x, use_cache=False)
    _sync(emb.device)
    return time.perf_counter() - t0


def run(args) -> List[Dict]:
    device = torch.device(args.device)
    dtype = af.models.loading.parse_dtype(args.dtype)
    if args.random:
        model = random_model(args.random, args.device, dtype)
        tok = FixedTokenizer(args.tokens, model.config.vocab_size)
        name = f"random {args.random}"
    else:
        model, tok, name = af.load_model(args.model, dtype=args.dtype, device=args.device)
    text = open(args.text_file).read() if args.text_file else None
    ids = tokenize(tok, text, args.max_tokens)
    common = dict(k=args.k, epsilon=args.epsilon, max_neurons=args.max_neurons, max_tokens=args.max_tokens, seed=0,
                  progress=False)
    configs = [("ours kernels+bisect", dict(kernels=True, strategy="bisect")),
               ("ours kernels+linear", dict(kernels=True, strategy="linear")),
               ("ours kernels+bisect, Stage 1 bf16 autocast", dict(kernels=True, strategy="bisect",
                                                                   stage1_dtype="bfloat16")),
               ("ours reference+bisect", dict(kernels=False, strategy="bisect")),
               ("ours reference+linear", dict(kernels=False, strategy="linear"))]
    # warm-up (module load, kernel compilation, allocator)
    af.find_critical(model, tok, text, **{**common, "k": 2, "max_neurons": 4})
    floor_time(model, ids, 2)
    rows: List[Dict] = []
    base = None
    if not args.skip_baseline:
        times = []
        for _ in range(args.baseline_repeats):
            with PeakMemory(device) as pm:
                b = paper_find_critical(model, tok, text, k=args.k, epsilon=args.epsilon,
                                        max_neurons=args.max_neurons, max_tokens=args.max_tokens)
            times.append(b["timings"])
        base = b
        med = {k: statistics.median(t[k] for t in times) for k in times[0]}
        rows.append(dict(config="paper baseline", stage1=med["stage1"], ranking=med["ranking"], stage2=med["stage2"],
                         total=med["total"], forwards=b["forwards"], n_critical=len(b["neurons"]),
                         log10_ratio=b["log10_ratio"], peak_mb=pm.peak_mb, same_set=True))
    floors = [floor_time(model, ids, args.k, args.max_batch_tokens) for _ in range(args.repeats)]
    floor = statistics.median(floors)
    rows.append(dict(config="floor: plain batched forwards", stage1=floor, total=floor))
    for label, kw in configs:
        res = []
        for _ in range(args.repeats):
            with PeakMemory(device) as pm:
                r = af.find_critical(model, tok, text, max_batch_tokens=args.max_batch_tokens, **common, **kw)
            res.append((r, pm.peak_mb))
        r = res[-1][0]
        med = {k: statistics.median(x[0].timings[k] for x in res) for k in ("stage1", "stage2", "total")}
        rows.append(dict(config=label, **med, forwards=r.stats["stage1_forwards"] + r.stats["stage2_forwards"],
                         stage2_forwards=r.stats["stage2_forwards"], n_critical=len(r.neurons),
                         log10_ratio=r.log10_ratio, peak_mb=max(x[1] for x in res),
                         same_set=None if base is None else r.names == base["neurons"]))
    meta = dict(model=name, device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
                dtype=str(dtype), k=args.k, n_tokens=int(ids.numel()), date=datetime.date.today().isoformat(),
                host=platform.node(), threads=torch.get_num_threads(), backends=ops.backend_info(), **versions())
    for row in rows:
        row.update(stage1_over_floor=row["stage1"] / floor if row.get("stage1") else None,
                   speedup_vs_baseline=(rows[0]["total"] / row["total"]) if base is not None and row.get("total")
                   else None)
    return [dict(meta=meta)] + rows


def print_table(out: List[Dict]) -> None:
    meta, rows = out[0]["meta"], out[1:]
    print(f"# {meta['model']} on {meta['device']} ({meta['dtype']}), K={meta['k']}, T={meta['n_tokens']}, "
          f"torch {meta['torch']}, {meta['date']}")
    cols = ["config", "stage1", "ranking", "stage2", "total", "forwards", "stage2_forwards", "peak_mb",
            "n_critical", "log10_ratio", "same_set", "stage1_over_floor", "speedup_vs_baseline"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--random", choices=sorted(RANDOM_SHAPES), default=None, help="random weights of this shape")
    ap.add_argument("--tokens", type=int, default=128, help="text length for --random")
    ap.add_argument("--text-file", default=None)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--max-neurons", type=int, default=1000)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = run(a)
    print_table(out)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
