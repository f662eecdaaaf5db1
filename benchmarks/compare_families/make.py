"""Build the checkpoint families that `achilles-fast compare` is measured on (issue 22), offline and seeded.

  python benchmarks/compare_families/make.py finetune  --out out/families   # SmolLM2-135M fine-tuned on Python code
  python benchmarks/compare_families/make.py quantize  --out out/families   # SmolLM2 RTN 8- and 4-bit round trips
  python benchmarks/compare_families/make.py scratch   --out out/families   # a ~10M Llama trained from scratch on
                                                                            # WikiText-2, revisions stepN in a hub cache
Then benchmarks/compare_families/run.sh runs compare on each family. Every step is seeded (torch, data order).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WIKITEXT = Path(os.environ.get("ACHILLES_FAST_SHARED", ROOT.parent / "shared")) / "data" / "wikitext-2-raw"


def code_corpus(max_chars: int = 3_000_000) -> str:
    """Python source of the standard library (shipped with every Python): another domain than prose."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for f in sorted(stdlib.glob("*.py")):
        t = f.read_text(encoding="utf-8", errors="ignore")
        parts.append(t)
        n += len(t)
        if n > max_chars:
            break
    return "\n".join(parts)


def wikitext() -> str:
    files = sorted(WIKITEXT.glob("*.raw")) or sorted(WIKITEXT.glob("*.txt"))
    if not files:
        sys.exit(f"WikiText-2 not found under {WIKITEXT} (the ../shared folder beside the checkout)")
    return max(files, key=lambda p: p.stat().st_size).read_text(encoding="utf-8")


def batches(ids: torch.Tensor, seq: int, batch: int, steps: int, seed: int):
    """``steps`` batches [batch, seq] of random windows of ``ids`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=g)
        yield torch.stack([ids[s:s + seq] for s in starts.tolist()])


def train(model, ids, *, steps, seq, batch, lr, seed, save_at, save, log_every=10):
    """AdamW with linear warm-up; ``save(step)`` at each step in ``save_at``; -> losses."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    losses, t0 = [], time.time()
    if 0 in save_at:
        save(0)
    for step, x in enumerate(batches(ids, seq, batch, steps, seed), 1):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % log_every == 0:
            print(f"step {step}/{steps} loss {sum(losses[-log_every:]) / log_every:.3f} "
                  f"({(time.time() - t0) / step:.2f} s/step)", flush=True)
        if step in save_at:
            model.eval()
            save(step)
            model.train()
    model.eval()
    return losses


def finetune(out: Path, steps: int, seed: int) -> None:
    from achilles_fast import load_model
    model, tok, _ = load_model("smollm2-135m")
    ids = tok(code_corpus(), return_tensors="pt")["input_ids"][0]
    base = out / "smollm2-base"
    if not (base / "config.json").exists():
        model.save_pretrained(base)
        tok.save_pretrained(base)
    save_at = {steps // 2, steps}

    def save(step):
        d = out / f"smollm2-code-step{step}"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        print(f"saved {d}", flush=True)
    losses = train(model, ids, steps=steps, seq=64, batch=2, lr=1e-4, seed=seed, save_at=save_at, save=save)
    (out / "smollm2-code-losses.json").write_text(json.dumps(losses))


def quantize(out: Path) -> None:
    """SmolLM2 fp32 (the dequantised Q4_1 GGUF it ships as) and its round-to-nearest 8- and 4-bit round trips
    (symmetric, per output channel, every Linear of the decoder blocks), saved as HF folders."""
    from achilles_fast import load_model
    from achilles_fast.studies.compression.quantize import quantized
    for bits in (8, 4):
        d = out / f"smollm2-rtn{bits}"
        if (d / "config.json").exists():
            continue
        model, tok, _ = load_model("smollm2-135m")
        with quantized(model, bits):  # the round trip in place while the weights are written
            model.save_pretrained(d)
        tok.save_pretrained(d)
        print(f"saved {d}", flush=True)


def scratch(out: Path, steps: int, every: int, seed: int) -> None:
    """A Llama (hidden 384, 6 layers, SwiGLU 1024, ~10.7M parameters with stories260K's 512-token vocabulary)
    trained from scratch on WikiText-2; a checkpoint every ``every`` steps, stored as revisions ``stepN`` of the hub
    repo ``achilles-fast/tiny-llama-wikitext`` in a genuine hub-cache layout under out/hub."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from achilles_fast.bench.checkpoints import TOKENIZER_FILES, save_hub_repo
    stories = ROOT / "tests" / "data" / "stories260K"
    tok = AutoTokenizer.from_pretrained(stories)
    ids = tok(wikitext(), return_tensors="pt")["input_ids"][0]
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=6, vocab_size=tok.vocab_size, max_position_embeddings=512,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {ids.numel()} tokens", flush=True)
    folders = out / "scratch-folders"

    def save(step):
        d = folders / f"step{step}"
        model.save_pretrained(d)
        for f in TOKENIZER_FILES:
            if (stories / f).exists():
                (d / f).write_bytes((stories / f).read_bytes())
        print(f"saved {d}", flush=True)
    save_at = set(range(every, steps + 1, every))
    losses = train(model, ids, steps=steps, seq=128, batch=8, lr=1e-3, seed=seed, save_at=save_at, save=save)
    (out / "scratch-losses.json").write_text(json.dumps(losses))
    snaps = [((f"step{s}",), {p.name: p for p in (folders / f"step{s}").iterdir()}) for s in sorted(save_at)]
    save_hub_repo(out / "hub", "achilles-fast/tiny-llama-wikitext", snaps)
    print(f"hub cache {out / 'hub'}: revisions {', '.join(f'step{s}' for s in sorted(save_at))}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=("finetune", "quantize", "scratch"))
    ap.add_argument("--out", default="out/families")
    ap.add_argument("--steps", type=int, default=None, help="training steps (finetune 150, scratch 400)")
    ap.add_argument("--every", type=int, default=50, help="scratch: a checkpoint every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.family == "finetune":
        finetune(out, a.steps or 150, a.seed)
    elif a.family == "quantize":
        quantize(out)
    else:
        scratch(out, a.steps or 400, a.every, a.seed)


if __name__ == "__main__":
    main()
