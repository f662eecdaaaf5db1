"""Kernel benchmarks: each achilles_fast op vs its plain-PyTorch equivalent, at real model shapes.

    achilles-fast bench kernels                     # CPU: SmolLM2-135M shapes (~30 s)
    achilles-fast bench kernels --models llama3-8b --ops absdiff,noise,mask,batched_mask --reps 5
    achilles-fast bench kernels --device cuda --models all --out bench_kernels.csv
    achilles-fast bench kernels --ops absdiff --models smollm2 --dtypes float32,bfloat16 --reps 30

Implementations compared per op (what is available on the device):
  cpp / cuda  the compiled kernels (achilles_fast._C)                        triton  the Triton kernels (GPU)
  torch       the plain-PyTorch expression the op replaces, e.g. (noisy - clean).abs().sum(0)
  reference   the op's pure-PyTorch reference, achilles_fast.ops.<op>.*_ref (the spec; with --with-reference, slow
              for the noise)
Every implementation runs on the same random inputs (never zeros), after warm-up, interleaved rep by rep (fair on a
loaded machine); the row reports the median (and min) wall time, achieved GB/s (bytes each op must move at
least), on CUDA the fraction of the measured device copy bandwidth, and the speed-up over ``torch``.
Rows are CSV with date, device and versions; --out appends them to a file.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time

import torch

import achilles_fast.ops as ops
from achilles_fast.ops.absdiff import absdiff_accum_ref
from achilles_fast.ops.noise import noisy_embeds_ref

# name: (hidden H, MLP width M (down_proj input), vocab V, tokens T)
MODELS = {
    "smollm2": dict(label="SmolLM2-135M", H=576, M=1536, V=49152, T=115),
    "llama3-8b": dict(label="Llama-3-8B", H=4096, M=14336, V=128256, T=128),
    "qwen2.5-72b": dict(label="Qwen2.5-72B", H=8192, M=29568, V=152064, T=128),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPS = ("absdiff", "noise", "mask", "batched_mask", "token_nll")
FIELDS = ["date", "device", "torch", "triton", "python", "op", "model", "dtype", "shape", "impl", "median_ms",
          "min_ms", "reps", "gbps", "frac_copy_bw", "speedup_vs_torch"]


def _versions():
    try:
        import triton
        tv = triton.__version__
    except Exception:
        tv = ""
    return {"torch": torch.__version__, "triton": tv, "python": platform.python_version()}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_interleaved(fns: dict, dev, warmup: int, reps: int) -> dict:
    """name -> list of seconds; the implementations alternate rep by rep."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(dev)
    out = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if dev.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                out[k].append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out[k].append(time.perf_counter() - t0)
    return out


def copy_bandwidth(dev) -> float:
    """Measured device copy bandwidth (bytes/s, read + write) on a 1 GiB tensor; 0 on CPU (not reported)."""
    if dev.type != "cuda":
        return 0.0
    src = torch.empty(2**28, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, dev, 3, 20)["copy"]
    return 2 * src.numel() * 4 / statistics.median(t)


def _ours(dev):
    """(impl name, context) pairs for the achilles_fast kernels on this device."""
    info = ops.backend_info()
    if dev.type == "cpu":
        return [("cpp", None)] if info["cpp"] else []
    res = []
    if info["cuda"]:
        res.append(("cuda", "auto"))
    if info["triton"]:
        res.append(("triton", "triton"))
    return res


def _with_backend(backend, fn):
    if backend is None:
        return fn

    def run():
        old = os.environ.get("ACHILLES_FAST_CUDA_BACKEND")
        os.environ["ACHILLES_FAST_CUDA_BACKEND"] = backend
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop("ACHILLES_FAST_CUDA_BACKEND", None)
            else:
                os.environ["ACHILLES_FAST_CUDA_BACKEND"] = old
    return run


def cases(op, m, dtype, dev, K, with_reference):
    """(shape label, bytes moved, {impl: fn}) for one op / model / dtype."""
    H, M, V, T = m["H"], m["M"], m["V"], m["T"]
    g = torch.Generator(device="cpu").manual_seed(0)
    torch.manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev).to(dtype)  # noqa: E731  (made on the device: fast for big shapes)
    es = torch.tensor([], dtype=dtype).element_size()
    impls = {}
    if op == "absdiff":  # scanned output channels of down_proj: C = H
        C = H
        clean = rnd(T, C)
        noisy = clean.unsqueeze(0) + rnd(K, T, C)
        acc = torch.zeros(T, C, device=dev)
        for name, be in _ours(dev):
            impls[name] = _with_backend(be, lambda: ops.absdiff_accum_(acc, clean, noisy))
        impls["torch"] = lambda: (noisy - clean).abs().sum(0)
        if with_reference:
            impls["reference"] = lambda: absdiff_accum_ref(acc, clean, noisy)
        return f"K={K} T={T} C={C}", K * T * C * es + T * C * (es + 8), impls
    if op == "noise":
        e = rnd(T, H)
        for name, be in _ours(dev):
            impls[name] = _with_backend(be, lambda: ops.noisy_embeds(e, 5.0, 1, 0, K))
        impls["torch"] = lambda: e + 5.0 * torch.randn((K, T, H), device=dev, dtype=dtype)
        if with_reference:
            impls["reference"] = lambda: noisy_embeds_ref(e, 5.0, 1, 0, K)
        return f"K={K} T={T} H={H}", K * T * H * es + T * H * es, impls
    if op == "mask":  # down_proj weight [H, M], mask + restore 64 output channels (rows)
        w = rnd(H, M)
        ch = torch.randperm(H, generator=g)[:64].to(dev)

        def ours():
            s, _ = ops.mask_channels_(w, None, ch, 0)
            ops.restore_channels_(w, None, ch, s, None, 0)

        def plain():
            s = w.index_select(0, ch).clone()
            w.index_fill_(0, ch, 0)
            w.index_copy_(0, ch, s)

        for name, be in _ours(dev):
            impls[name] = _with_backend(be, ours)
        impls["torch"] = plain
        return f"W=[{H},{M}] n=64", 4 * 64 * M * es, impls
    if op == "batched_mask":  # Stage 2: B prefix masks over down_proj outputs [B, T, H]
        B = 16 if dev.type == "cuda" else 4
        y = rnd(B, T, H)
        keep = (torch.rand(B, H, generator=g) > 0.05).float().to(dev)
        for name, be in _ours(dev):
            impls[name] = _with_backend(be, lambda: ops.batched_channel_mask(y, keep))
        impls["torch"] = lambda: y * keep.to(y.dtype).unsqueeze(1)
        return f"B={B} T={T} C={H}", 2 * B * T * H * es + B * H * 4, impls
    if op == "token_nll":
        N = T * (4 if dev.type == "cuda" else 1)
        h = rnd(N, H)
        w = rnd(V, H) / H ** 0.5
        t = torch.randint(0, V, (N,), generator=g).to(dev)
        for name, be in _ours(dev):
            impls[name] = _with_backend(be, lambda: ops.token_nll(h, w, t))
        impls["torch"] = lambda: torch.nn.functional.cross_entropy(h.float() @ w.float().t(), t, reduction="none")
        return f"N={N} H={H} V={V}", V * H * es + N * H * es, impls
    raise ValueError(op)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None, help="comma list of %s, or all (default: CPU smollm2; GPU all)"
                   % ",".join(MODELS))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--k", type=int, default=100, help="noisy samples K (absdiff, noise)")
    p.add_argument("--reps", type=int, default=None, help="timed reps per impl (default CPU 7, GPU 50)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--with-reference", action="store_true", help="also time the references (slow for noise)")
    p.add_argument("--out", default=None, help="append CSV rows to this file")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = a.models or ("all" if dev.type == "cuda" else "smollm2")
    models = list(MODELS) if models == "all" else models.split(",")
    reps = a.reps or (50 if dev.type == "cuda" else 7)
    info = ops.backend_info()
    print(f"# backends: cpp={info['cpp']} cuda={info['cuda']} triton={info['triton']} source={info['source']}",
          file=sys.stderr)
    bw = copy_bandwidth(dev)
    if bw:
        print(f"# measured copy bandwidth: {bw / 1e9:.0f} GB/s", file=sys.stderr)
    base = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                device=device_name(dev), **_versions())
    writer = csv.DictWriter(sys.stdout, fieldnames=FIELDS)
    writer.writeheader()
    fout = None
    if a.out:
        new = not os.path.exists(a.out)
        fout = open(a.out, "a", newline="")
        fw = csv.DictWriter(fout, fieldnames=FIELDS)
        if new:
            fw.writeheader()
    with torch.no_grad():
        for op in a.ops.split(","):
            for mk in models:
                m = MODELS[mk]
                for dn in a.dtypes.split(","):
                    shape, nbytes, impls = cases(op, m, DTYPES[dn], dev, a.k, a.with_reference)
                    ts = time_interleaved(impls, dev, a.warmup, reps)
                    t_torch = statistics.median(ts["torch"]) if "torch" in ts else None
                    for impl, t in ts.items():
                        med = statistics.median(t)
                        row = dict(base, op=op, model=m["label"], dtype=dn, shape=shape, impl=impl,
                                   median_ms=f"{med * 1e3:.3f}", min_ms=f"{min(t) * 1e3:.3f}", reps=len(t),
                                   gbps=f"{nbytes / med / 1e9:.2f}",
                                   frac_copy_bw=f"{nbytes / med / bw:.3f}" if bw else "",
                                   speedup_vs_torch=f"{t_torch / med:.2f}" if t_torch else "")
                        writer.writerow(row)
                        sys.stdout.flush()
                        if fout:
                            fw.writerow(row)
                    del impls
    if fout:
        fout.close()


if __name__ == "__main__":
    main()
