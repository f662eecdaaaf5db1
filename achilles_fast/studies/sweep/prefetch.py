"""Load the next checkpoint in the background while the current one runs (bounded by memory).

One background thread loads (and, for a GGUF seen for the first time, converts) the checkpoint a worker will need
next, with one intra-op thread so it does not take cores from the running forwards. It starts only when the
machine's available memory holds the model about twice over (an estimate from the files on disk) plus a margin,
so at most two checkpoints are in memory at once; otherwise the next checkpoint loads when it is needed.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

from ...utils import available_ram
from .spec import Checkpoint

MARGIN_BYTES = 1 << 30
GGUF_EXPANSION = 8  # a 4-bit GGUF dequantised to float32 is ~8x its file


def estimate_bytes(ck: Checkpoint) -> Optional[int]:
    """Bytes the checkpoint takes once loaded in float32 (weights files on disk); None when unknown."""
    from ...models.loading import resolve
    try:
        kind, path = resolve(ck.path)
    except Exception:
        return None
    if kind == "gguf":
        return path.stat().st_size * GGUF_EXPANSION
    return _weights_bytes(path)


def _weights_bytes(folder: Path) -> int:
    files = [p for pat in ("*.safetensors", "*.bin", "*.pt") for p in folder.glob(pat)]
    return sum(p.stat().st_size for p in files)


class Prefetcher:
    """``start(ck)`` loads ``load(ck)`` in a thread when memory allows; ``take(name)`` returns it (waiting for the
    load to finish), or None when that checkpoint is not being prefetched. A load error is returned as is (the
    caller records it)."""

    def __init__(self, load: Callable[[Checkpoint], object], enabled: bool = True,
                 available: Callable[[], int] = available_ram):
        self.load, self.enabled, self.available = load, enabled, available
        self.name: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._result: object = None
        self.started = self.skipped = 0

    def fits(self, ck: Checkpoint) -> bool:
        need = estimate_bytes(ck)
        return need is not None and self.available() > 2 * need + MARGIN_BYTES

    def start(self, ck: Checkpoint) -> bool:
        if not self.enabled or self._thread is not None:
            return False
        if not self.fits(ck):
            self.skipped += 1
            return False
        import torch
        torch.get_num_threads()  # fixes the calling thread's pool size before the loader changes the default
        self.name = ck.name
        self._thread = threading.Thread(target=self._run, args=(ck,), name=f"prefetch-{ck.name}", daemon=True)
        self._thread.start()
        self.started += 1
        return True

    def _run(self, ck: Checkpoint) -> None:
        import torch
        main_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # this thread's pool; the running forwards keep theirs
        try:
            self._result = self.load(ck)
        except Exception as e:  # returned to the caller, which records an error row
            self._result = e
        finally:
            torch.set_num_threads(main_threads)  # threads that start torch work later get the worker's count

    def take(self, name: str):
        """The prefetched checkpoint ``name`` (waits for its load); None when another or none is prefetched (another
        one is dropped: at most two checkpoints in memory)."""
        if self._thread is None or self.name != name:
            self.close()
            return None
        self._thread.join()
        out, self._result, self._thread, self.name = self._result, None, None, None
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._thread = self._result = self.name = None
