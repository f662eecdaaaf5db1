"""Stage 1 score memory under ``max_score_mb`` on a random Qwen3-MoE (8 layers x 64 experts = 512 targets):

    for b in none 128 64 16; do python benchmarks/moe_score_memory.py $b 512; done

argv: budget in MiB (or ``none``), max_batch_tokens. One budget per fresh process with no warm-up (memory a
warm-up frees is reused by the allocator and would hide the peak); peak RSS growth over the call comes from the
kernel's VmHWM. Scores are compared with the unbudgeted run's, which the ``none`` run saves: run it first.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny_model  # noqa: E402

import achilles_fast.ops as ops  # noqa: E402
from achilles_fast.bench.e2e import PeakMemory  # noqa: E402
from achilles_fast.models.registry import discover_targets  # noqa: E402
from achilles_fast.method.stage1 import sensitivity_scores  # noqa: E402


def main() -> None:
    tag, max_batch_tokens = sys.argv[1], int(sys.argv[2])
    budget = None if tag == "none" else float(tag)
    model = tiny_model("qwen3_moe", seed=0, pad_token_id=0, hidden_size=256, intermediate_size=512,
                       moe_intermediate_size=128, num_experts=64, num_experts_per_tok=4, num_hidden_layers=8,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1000)
    targets = discover_targets(model)
    ids = torch.randint(0, 1000, (256,), generator=torch.Generator().manual_seed(0))  # [T]
    need = sum(t.num_channels for t in targets) * ids.numel() * 8 / 2**20  # fp32 clean + fp32 accumulator
    print(f"{len(targets)} targets, clean copies + accumulators {need:.0f} MB")
    ops.noisy_embeds(torch.randn(2, 3), 1.0, 0, 0, 1)  # load the kernels outside the measurement
    stats: dict = {}
    t0 = time.perf_counter()
    with PeakMemory(torch.device("cpu")) as pm:
        scores = sensitivity_scores(model, targets, ids, k=20, max_score_mb=budget, stats=stats,
                                    reduce_positions=True, max_batch_tokens=max_batch_tokens)
    dt = time.perf_counter() - t0
    out = Path(tempfile.gettempdir())
    torch.save(scores, out / f"moe_scores_{tag}.pt")
    ref = torch.load(out / "moe_scores_none.pt", weights_only=False)
    same = all(torch.equal(a.values, b.values) and torch.equal(a.pos, b.pos) for a, b in zip(ref, scores))
    print(f"max_score_mb={budget}: groups {stats['stage1_groups']}, forwards {stats['stage1_forwards']}, "
          f"peak RSS +{pm.peak_mb:.0f} MB, {dt:.1f} s, identical scores {same}")


if __name__ == "__main__":
    main()
