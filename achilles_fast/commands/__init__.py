"""CLI subcommands; shared argument helpers."""
from __future__ import annotations

import argparse
from typing import Optional


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="local HF folder, .gguf file, or a named default (smollm2-135m)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


def add_text_args(p: argparse.ArgumentParser, flag_help: str = "text") -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", default=None, help=f"{flag_help} as a string (default: built-in passage)")
    g.add_argument("--text-file", default=None, help=f"{flag_help} from a UTF-8 file")
    p.add_argument("--max-tokens", type=int, default=512, help="use the first N tokens (default 512)")


def read_text(args) -> Optional[str]:
    if getattr(args, "text_file", None):
        with open(args.text_file, encoding="utf-8") as f:
            return f.read()
    return getattr(args, "text", None)


def load(args):
    from ..loading import load_model
    return load_model(args.model, dtype=args.dtype or "float32", device=args.device or "cpu")
