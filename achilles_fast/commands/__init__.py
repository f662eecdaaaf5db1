"""CLI subcommands; shared argument helpers."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="local HF folder, .gguf file, Hugging Face Hub id (org/name, org/name@revision, "
                                 "org/name/file.gguf), or a named default (smollm2-135m)")
    p.add_argument("--gguf-file", default=None, metavar="NAME",
                   help="the GGUF file to load from a hub repo or local folder holding several")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model repo's own Python modelling code to run (off by default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--device-map", default=None,
                   help="spread the model over devices with accelerate: auto, balanced, sequential, or a JSON "
                        "object {module: device} (devices: 0, 1, cuda:0, cpu, disk); overrides --device")
    p.add_argument("--offload-folder", default=None, help="folder for 'disk' entries of --device-map")


def add_text_args(p: argparse.ArgumentParser, flag_help: str = "text", max_tokens: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", default=None, help=f"{flag_help} as a string (default: built-in passage)")
    g.add_argument("--text-file", default=None, help=f"{flag_help} from a UTF-8 file")
    if max_tokens:
        from ..method.config import FindConfig
        FindConfig.add_arguments(p, only=["max_tokens"])


def read_text(args) -> Optional[str]:
    if getattr(args, "text_file", None):
        return read_text_file(args.text_file, "--text-file")
    return getattr(args, "text", None)


def read_text_file(path: str, flag: str) -> str:
    """A UTF-8 text file named by ``flag``; one-line errors for a missing file, a folder, unreadable or not UTF-8."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a text file")
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


def read_eval_text(args) -> Optional[str]:
    """The ``--eval-text-file`` contents (None when not given)."""
    path = getattr(args, "eval_text_file", None)
    return read_text_file(path, "--eval-text-file") if path else None


def parse_device_map(spec: Optional[str]):
    """--device-map value -> what from_pretrained takes (a strategy name or a dict)."""
    if spec is None or not spec.strip().startswith("{"):
        return spec
    import json
    try:
        dm = json.loads(spec)
    except json.JSONDecodeError as e:
        raise ValueError(f"--device-map: not a JSON object ({e})") from None
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in dm.items()}


def load(args):
    from ..models.loading import load_model
    return load_model(args.model, dtype=args.dtype or "float32", device=args.device or "cpu",
                      device_map=parse_device_map(getattr(args, "device_map", None)),
                      offload_folder=getattr(args, "offload_folder", None),
                      gguf_file=getattr(args, "gguf_file", None),
                      trust_remote_code=getattr(args, "trust_remote_code", False))


OUTPUT_FLAGS = ("out", "plot", "save_pretrained", "csv", "summary_csv", "json")  # what commands write
INPUT_FLAGS = (("neurons", "the --neurons file"), ("text_file", "the --text-file"),
               ("eval_text_file", "the --eval-text-file"), ("corpus", "the --corpus"), ("texts", "the --texts"),
               ("results", "the result file"))  # what they read, besides the model


def check_outputs(args) -> None:
    """Before anything runs: no output of the command (``OUTPUT_FLAGS``: --out, --plot, ...) is, holds,
    or lies inside a read-only one of, its inputs (the model's folder and files, the GGUF conversion cache,
    --neurons, --text-file, --eval-text-file, --corpus, --texts, result files, report's database), resolved with
    symlinks followed: one line (InputOverwriteError)."""
    from ..models.loading import model_inputs
    from ..utils import check_not_input, path_inputs
    inputs = []
    if getattr(args, "model", None):
        inputs += model_inputs(args.model, getattr(args, "gguf_file", None))
    named = INPUT_FLAGS + ((("db", "the sweep database"),) if args.command == "report" else ())
    for attr, what in named:
        value = getattr(args, attr, None)
        for v in value if isinstance(value, list) else [value] if value else []:
            inputs += path_inputs(v, what)
    for attr in OUTPUT_FLAGS:
        if getattr(args, attr, None):
            check_not_input(getattr(args, attr), inputs, "--" + attr.replace("_", "-"))


def write_json(obj, path: str) -> None:
    """``obj`` as indented JSON at ``path`` (a command's ``--out``); NaN/Inf are refused (ValueError)."""
    import json
    text = json.dumps(obj, indent=2, allow_nan=False)
    with open(path, "w") as f:
        f.write(text + "\n")


def check_output(path: Optional[str], flag: str, folder: bool = False) -> None:
    """Fail now, in one line, when ``path`` (a command's ``--out`` file, or a ``folder`` such as ``--plot``) could
    not be written at the end of the run: a folder given for a file, a missing or non-folder parent, no
    permission, a read-only file system. Creates nothing (a probe file is made and removed)."""
    if path is None:
        return
    p = Path(path).expanduser()
    if folder:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path} exists and is not a folder")
        base = p
        while not base.exists():  # the folder is made at the end: check the nearest existing ancestor
            base = base.parent
        if not base.is_dir():
            raise ValueError(f"{flag} {path}: {base} is a file, not a folder")
    else:
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a file name such as {p / 'result.json'}")
        base = p.parent
        if not base.is_dir():
            what = "is a file, not a folder" if base.exists() else "does not exist"
            raise ValueError(f"{flag} {path}: folder {base} {what}")
        if p.exists() and not os.access(p, os.W_OK):
            raise ValueError(f"{flag} {path}: the file is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".achilles-fast-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {base} ({e.strerror or e})") from None


def save_output(path: str, flag: str, write: Callable[[str], Any], folder: bool = False) -> bool:
    """``write(path)`` (a file, written to a temporary sibling and renamed into place, or a ``folder``). When that
    fails with OSError (disk full, folder removed or made read-only during the run), write to a fallback path in
    the system temp folder instead, say where on stderr and return False (the command then exits 2)."""
    try:
        _write_at(path, write, folder)
        if not folder:
            print(f"saved {path}", file=sys.stderr)
        return True
    except OSError as e:
        reason = e.strerror or str(e)
    fallback = os.path.join(tempfile.gettempdir(),
                            f"achilles-fast-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{Path(path).name or 'out'}")
    _write_at(fallback, write, folder)
    print(f"error: could not write {flag} {path} ({reason}); saved to {fallback} instead", file=sys.stderr)
    return False


def _write_at(path: str, write: Callable[[str], Any], folder: bool) -> None:
    if folder:
        write(path)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).expanduser().parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600: give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def print_paths(paths, stream=None) -> None:
    """``plot <path>`` for each file a plot function wrote."""
    for path in paths:
        print(f"plot {path}", file=stream or sys.stderr)


def quiet_loading() -> None:
    """No progress bars from transformers / huggingface_hub (``--quiet``: e.g. the weight-loading bar)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def print_report(rows, result: dict, out: Optional[str]) -> bool:
    """Print aligned ``(label, value)`` rows; write ``result`` as JSON to ``out`` when given (``save_output``:
    False when it went to a fallback path)."""
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    return save_output(out, "--out", lambda p: write_json(result, p)) if out else True
