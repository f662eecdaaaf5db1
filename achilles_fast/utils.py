"""Small helpers shared across the package: the cache folder, eval mode, progress bars, and the one way files are
written (``atomic_write``, ``write_json``) and output paths checked (``check_writable``)."""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Type, Union

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


def atomic_write(path: Union[str, Path], data: Union[str, bytes, Callable[[str], Any]]) -> None:
    """Write ``data`` (text, bytes, or a callable given a path to write) to a temp file beside ``path``, then rename
    it over ``path``: readers see the old file or the whole new one, and a writer that raises leaves nothing behind.
    The file gets the mode ``open()`` would give it (umask applied)."""
    path = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        if callable(data):
            os.close(fd)
            fd = None
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                fd = None
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: Union[str, Path], indent: int = 2) -> None:
    """``obj`` as indented JSON (and a final newline) at ``path``, atomically; NaN/Inf are refused (ValueError,
    before anything is written)."""
    atomic_write(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def check_writable(path: Union[str, Path], what: str = "", *, folder: bool = False,
                   error: Type[Exception] = ValueError) -> None:
    """Fail now, in one line (``error``, its message starting with ``what``, e.g. a flag such as ``--out``), when
    ``path`` could not be written later: a file (or with ``folder``, a folder, made later with its parents) whose
    place is a folder / a file, a missing or non-folder parent, a file or folder without write permission, a
    read-only file system. Creates nothing (a probe file is made and removed)."""
    head = f"{what} {path}" if what else f"{path}"
    p = Path(path).expanduser()
    if folder:
        if p.exists() and not p.is_dir():
            raise error(f"{head} exists and is not a folder")
        base = p
        while not base.exists():  # the folder is made later: check the nearest existing ancestor
            base = base.parent
        if not base.is_dir():
            raise error(f"{head}: {base} is a file, not a folder")
    else:
        if p.is_dir():
            raise error(f"{head} is a folder; give a file name such as {p / 'result.json'}")
        base = p.parent
        if not base.is_dir():
            state = "is a file, not a folder" if base.exists() else "does not exist"
            raise error(f"{head}: folder {base} {state}")
        if p.exists() and not os.access(p, os.W_OK):
            raise error(f"{head}: the file is not writable")
    if not os.access(base, os.W_OK):
        raise error(f"{head}: folder {base} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".achilles-fast-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise error(f"{head}: cannot write in {base} ({e.strerror or e})") from None
