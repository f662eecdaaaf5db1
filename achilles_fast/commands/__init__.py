"""CLI subcommands; shared argument helpers."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..utils import check_writable, fallback_path, write_json  # noqa: F401  (write_json: the commands' JSON writer)


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


def load(args):
    """The command's model, tokenizer and display name, from its model arguments (``resolve_model`` checks them)."""
    from ..models.loading import resolve_model
    return resolve_model(args.model, None, args.device, args.dtype, device_map=getattr(args, "device_map", None),
                         offload_folder=getattr(args, "offload_folder", None),
                         gguf_file=getattr(args, "gguf_file", None),
                         trust_remote_code=getattr(args, "trust_remote_code", False))


OUTPUT_FLAGS = ("out", "plot", "save_pretrained", "csv", "summary_csv", "json", "offload_folder")  # what commands write
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
    for spec in getattr(args, "checkpoints", None) or []:  # compare: every checkpoint is an input
        inputs += model_inputs(spec)
    named = INPUT_FLAGS + ((("db", "the sweep database"),) if args.command == "report" else ())
    for attr, what in named:
        value = getattr(args, attr, None)
        for v in value if isinstance(value, list) else [value] if value else []:
            inputs += path_inputs(v, what)
    for attr in OUTPUT_FLAGS:
        if getattr(args, attr, None):
            check_not_input(getattr(args, attr), inputs, "--" + attr.replace("_", "-"))


def check_output(path: Optional[str], flag: str, folder: bool = False) -> None:
    """Fail now, in one line, when a command's ``--out`` file (or a ``folder`` such as ``--plot``) could not be
    written at the end of the run (``utils.check_writable``)."""
    if path is not None:
        check_writable(path, flag, folder=folder)


def save_output(path: str, flag: str, write: Callable[[str], Any], folder: bool = False) -> bool:
    """``write(path)``: a file, written atomically by ``write`` (``write_json``, ``CriticalResult.to_json``), or a
    ``folder``. When that fails with OSError (disk full, folder removed or made read-only during the run), write to
    a fallback path in the system temp folder instead, say where on stderr and return False (the command then exits
    2)."""
    try:
        write(path)
        if not folder:
            print(f"saved {path}", file=sys.stderr)
        return True
    except OSError as e:
        reason = e.strerror or str(e)
    fallback = str(fallback_path(Path(path).name or "out"))
    write(fallback)
    print(f"error: could not write {flag} {path} ({reason}); saved to {fallback} instead", file=sys.stderr)
    return False


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
