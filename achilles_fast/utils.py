"""Small helpers shared across the package: the cache folder, eval mode, progress bars, and the one way files are
written (``atomic_write``, ``write_json``; folders: ``temp_dir_beside`` + ``replace_dir``) and output paths checked
(``check_writable``; never over an input: ``check_not_input``)."""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Type, Union

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


def over_budget(needs: str, need_bytes: int, budget_bytes: int) -> Optional[str]:
    """``"<needs> X MB, over the memory budget (Y MB)"`` when ``need_bytes`` exceeds ``budget_bytes``, else None: the
    one wording of every copy or cache refused for memory (the reason its stats give)."""
    if need_bytes <= budget_bytes:
        return None
    return f"{needs} {need_bytes / 2**20:.1f} MB, over the memory budget ({budget_bytes / 2**20:.1f} MB)"


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


def fallback_path(name: str) -> Path:
    """Where an output that could not be written goes instead: ``achilles-fast-<time>-<pid>-<name>`` in the system
    temp folder (the message then names it)."""
    return Path(tempfile.gettempdir()) / f"achilles-fast-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{name}"


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



# ---- folders written beside their target and renamed into place ----------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's live process counts)."""
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
            if int(pid) != os.getpid() and not pid_alive(int(pid)):
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
