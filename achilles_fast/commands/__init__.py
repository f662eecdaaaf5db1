"""CLI subcommands; shared argument helpers."""
from __future__ import annotations

import argparse
from typing import Optional


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="local HF folder, .gguf file, or a named default (smollm2-135m)")
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
        with open(args.text_file, encoding="utf-8") as f:
            return f.read()
    return getattr(args, "text", None)


def read_eval_text(args) -> Optional[str]:
    """The ``--eval-text-file`` contents (None when not given)."""
    if not getattr(args, "eval_text_file", None):
        return None
    with open(args.eval_text_file, encoding="utf-8") as f:
        return f.read()


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
                      offload_folder=getattr(args, "offload_folder", None))


def write_json(obj, path: str) -> None:
    """``obj`` as indented JSON at ``path`` (a command's ``--out``)."""
    import json
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def print_report(rows, result: dict, out: Optional[str]) -> None:
    """Print aligned ``(label, value)`` rows; write ``result`` as JSON to ``out`` when given."""
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    if out:
        write_json(result, out)
