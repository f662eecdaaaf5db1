"""Small helpers shared across the package: the cache folder, eval mode, progress bars."""
from __future__ import annotations

import contextlib
import numbers
import os
from pathlib import Path

from torch import nn


def cache_dir() -> Path:
    """Where achilles_fast caches converted models and builds: ``$ACHILLES_FAST_CACHE``, else
    ``$XDG_CACHE_HOME/achilles_fast``, else ``~/.cache/achilles_fast``."""
    env = os.environ.get("ACHILLES_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "achilles_fast"


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """model.eval() inside the block; the caller's train/eval flag is restored afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar (stderr), or a null context yielding None when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def available_ram() -> int:
    """Bytes of RAM available without swapping (Linux MemAvailable, counting reclaimable page cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 16 << 30


def positive_int(value, name: str, what: str = "") -> int:
    """``value`` when it is an integer >= 1 (a bool is not one), else ``ValueError`` naming it: the one check of a
    count (``what``: a few words on what it counts, for the message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}{f' ({what})' if what else ''} must be an integer >= 1, got {value!r}")
    return int(value)


def positive_int_arg(text: str) -> int:
    """argparse ``type=`` of a count flag: ``positive_int`` of the typed text (argparse names the flag)."""
    import argparse
    try:
        return positive_int(int(text), "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
