"""Small helpers shared across the package: the cache folder, eval mode, progress bars."""
from __future__ import annotations

import contextlib
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


class InputOverwriteError(FileExistsError, ValueError):
    """An output path that is, holds, or lies inside a read-only tree of, something the command reads."""


def check_not_input(out, inputs, flag: str = "", error=InputOverwriteError) -> None:
    """Refuse ``out`` (``error``, one line) when, resolved with symlinks followed, it is one of ``inputs`` or a
    folder holding one, or lies inside an input marked read-only. inputs: iterable of (what, path, read_only)."""
    o = Path(out).expanduser().resolve()
    for what, p, read_only in inputs:
        i = Path(p).expanduser().resolve()
        if o == i or o in i.parents:
            raise error(f"{flag + ' ' if flag else ''}{out} holds {what} ({p}), an input of this command: choose "
                        "another path")
        if read_only and i in o.parents:
            raise error(f"{flag + ' ' if flag else ''}{out} is inside {what} ({p}), which is read-only here: "
                        "choose another path")


def path_inputs(path, what: str, read_only: bool = False) -> list:
    """An input path for ``check_not_input``: the file, or the folder and the files directly inside it; [] when
    it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        return []
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else []
    return [(what, p, read_only)] + [(what, f, read_only) for f in files]


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
