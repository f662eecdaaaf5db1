"""Small helpers shared across the package: the cache folder, eval mode, progress bars."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
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


# ---- folders written beside their target and renamed into place ----------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def clean_stale_temps(out: Path) -> None:
    """Remove what interrupted saves into ``out`` left beside it: ``.<name>.tmp-PID-*`` and ``.<name>.old-PID``
    of processes that are gone (kill -9, power loss), and ``.<name>.XXXXXXXX`` folders of earlier versions."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}."
    for p in out.parent.iterdir():
        rest = p.name[len(prefix):] if p.name.startswith(prefix) else None
        if rest is None or not p.is_dir() or p.is_symlink():
            continue
        kind, _, tail = rest.partition("-")
        pid = tail.split("-")[0] if kind in ("tmp", "old") else ""
        if pid.isdigit():
            if int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
        elif len(rest) == 8 and rest.isalnum() or rest.endswith(".tmp"):  # tempfile.mkdtemp names, no pid
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _signals_raise():
    """In the main thread, SIGTERM and SIGHUP raise SystemExit inside the block (so ``finally`` clauses run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):
                old[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def temp_dir_beside(out):
    """A new folder ``.<name>.tmp-PID-XXXX`` beside ``out`` (0777 & ~umask, like any folder) for a save that is
    renamed into place (``replace_dir``); removed on leaving, also on errors, SIGTERM and SIGHUP. Leftovers of
    interrupted saves into ``out`` are removed first (``clean_stale_temps``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # not mkdtemp's private 0700
        with _signals_raise():
            yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is moved aside (``.<name>.old-PID``) first and
    deleted last (put back if the move fails)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

