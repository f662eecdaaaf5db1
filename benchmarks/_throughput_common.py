"""Shared by the throughput benchmarks (bench_sweep.py, bench_adaptive_k.py, bench_workers.py): texts, checkpoints,
the machine's load beside every figure."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ACHILLES_FAST_SHARED", ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K"
WIKI = SHARED / "data" / "wikitext-2-raw" / "wiki.test.excerpt200k.txt"


def load_avg() -> str:
    """`uptime`'s load averages (1, 5, 15 min), printed beside each figure."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def texts(n: int, min_chars: int = 600) -> List[Tuple[str, Optional[str]]]:
    """``n`` (name, text) pairs: the built-in passage (None), then WikiText-2 paragraphs of >= ``min_chars``."""
    out: List[Tuple[str, Optional[str]]] = [("default", None)]
    if n > 1:
        if not WIKI.exists():
            raise SystemExit(f"{WIKI} is absent: the benchmark needs the project's shared folder "
                             f"(ACHILLES_FAST_SHARED=/path/to/shared)")
        paras = [p.strip() for p in WIKI.read_text(encoding="utf-8").splitlines() if len(p.strip()) >= min_chars
                 and not p.strip().startswith("=")]  # one paragraph per line; headings are "= Title ="
        for i, p in enumerate(paras[: n - 1]):
            out.append((f"wiki{i + 1}", p[:4000]))
    return out[:n]


def tiny_llama(folder: Path, seed: int = 0, layers: int = 4, hidden: int = 64) -> Path:
    """A tiny random Llama saved as an HF folder with the stories260K tokenizer (vocab 512)."""
    from achilles_fast.bench.checkpoints import save_random_llama
    return save_random_llama(folder, seed=seed, layers=layers, hidden=hidden, intermediate=2 * hidden,
                             max_positions=1024, tokenizer_from=STORIES)


def timed(fn: Callable, repeats: int) -> Tuple[float, list]:
    """Median wall time of ``repeats`` calls and their return values."""
    times, outs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outs
