"""Hugging Face Hub ids: ``org/name``, ``org/name@revision``, a GGUF inside a repo (``org/name/file.gguf``).

Everything goes through ``huggingface_hub``: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE`` (use the
cached snapshot, never the network) and the usual token (``HF_TOKEN`` / ``hf auth login``). Files are downloaded
when allowed; offline, the cached snapshot of the revision is used. Each resolved reference records the repo id,
the revision's commit sha and the sha256 of the weight files (``HubModel.provenance``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional

# org/name, then @revision and /path/file.gguf in either order
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<rev>[^/@\s]+))?(?:/(?P<file>[^@\s]+\.gguf))?"
                     r"(?:@(?P<rev2>[^/@\s]+))?$")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# what a causal LM needs from a repo: config, tokenizer, and one weight format (safetensors, else .bin)
_CONFIG_TOKENIZER = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
                     "added_tokens.json", "vocab.*", "merges.txt", "*.tiktoken", "chat_template*"]
_SAFETENSORS = ["model*.safetensors", "model.safetensors.index.json"]
_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


class HubModelNotFoundError(FileNotFoundError):
    """A hub repo, revision or file that cannot be had (not on the Hub, or not cached while offline)."""


@dataclasses.dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: Optional[str] = None  # branch, tag or commit sha (None: the default branch)
    filename: Optional[str] = None  # a GGUF file inside the repo

    @property
    def spec(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") + (f"/{self.filename}" if self.filename
                                                                                else "")


def parse_hub_id(spec, revision: Optional[str] = None, gguf_file: Optional[str] = None) -> Optional[HubRef]:
    """``org/name[@revision][/file.gguf]`` -> HubRef, or None when ``spec`` does not look like a hub id.

    ``revision`` / ``gguf_file`` (the ``--gguf-file`` flag) may name what the spec does not; naming it twice
    differently is a ValueError.
    """
    m = _HUB_ID.match(str(spec).strip())
    if not m:
        return None
    from huggingface_hub.utils import validate_repo_id
    validate_repo_id(m["repo"])  # HFValidationError (a ValueError) with the hub's own rule
    rev, file = m["rev"] or m["rev2"], m["file"]
    for what, value in (("revision", rev or revision), ("file path", file or gguf_file)):
        if value and (value.startswith("/") or "." in str(value).replace("\\", "/").split("/")
                      or ".." in str(value).replace("\\", "/").split("/")):
            raise ValueError(f"hub id {spec!r}: {what} {value!r} has a '.' or '..' segment or starts with '/': "
                             "name a branch, tag or commit, and a file inside the repo")
    if m["rev"] and m["rev2"]:
        raise ValueError(f"hub id {spec!r}: two revisions ({m['rev']!r}, {m['rev2']!r})")
    for given, flag, own in ((revision, "revision", rev), (gguf_file, "gguf_file", file)):
        if given and own and given != own:
            raise ValueError(f"hub id {spec!r} names {own!r}, but {flag}={given!r}")
    if gguf_file and not str(gguf_file).endswith(".gguf"):
        raise ValueError(f"gguf_file {gguf_file!r}: expected a file name ending in .gguf")
    return HubRef(m["repo"], rev or revision or None, file or gguf_file or None)


def looks_like_hub_id(spec) -> bool:
    """``spec`` has the shape of a hub id (no check that it exists anywhere; never raises)."""
    try:
        return parse_hub_id(spec) is not None
    except ValueError:
        return False


class HubCacheCorruptError(ValueError):
    """A hub-cache file whose content does not match its LFS object id (edited or damaged on disk)."""


@dataclasses.dataclass
class HubModel:
    ref: HubRef
    path: Path  # snapshot folder (kind "hf") or the GGUF file inside it (kind "gguf"), in the hub cache
    commit: str

    @property
    def kind(self) -> str:
        return "gguf" if self.ref.filename else "hf"

    def weight_files(self) -> List[Path]:
        """The files transformers loads the weights from (safetensors before .bin, sharded or not)."""
        return [self.path] if self.kind == "gguf" else weight_files(self.path)

    def provenance(self, sha256: Callable[[Path], str]) -> Dict[str, object]:
        """What ran: repo id, requested revision, commit sha, sha256 of every weight file's content (path in the
        repo: ``sha256(file)``), checked against the LFS object id (the blob's name): a mismatch is a corrupt
        cache (HubCacheCorruptError)."""
        snap = self.path if self.kind == "hf" else _snapshot_of(self.path)
        shas = {}
        for p in self.weight_files():
            got, lfs = sha256(p), lfs_sha256(p)
            if lfs is not None and got != lfs:
                raise HubCacheCorruptError(
                    f"{os.path.realpath(p)}: the hub cache is corrupt: the content's sha256 is {got[:12]}..., not its "
                    f"LFS object id {lfs[:12]}...; delete the file and download {self.ref.repo_id} again")
            shas[p.relative_to(snap).as_posix()] = got
        return {"repo_id": self.ref.repo_id, "revision": self.ref.revision or "main", "commit": self.commit,
                "weights_sha256": shas}


def weight_files(folder: Path) -> List[Path]:
    """Weight files of an HF folder as transformers picks them: a safetensors index's shards, model.safetensors,
    then the same for pytorch_model.bin; [] when there are none."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).is_file():
            shards = json.loads((folder / index).read_text()).get("weight_map", {}).values()
            return sorted({folder / f for f in shards})
        if (folder / single).is_file():
            return [folder / single]
    return []


def lfs_sha256(path: Path) -> Optional[str]:
    """The LFS object id of a hub-cache file, read from its name without reading the file: its blob's name when
    that is a sha256 (an LFS object is named by its content's sha256); None otherwise."""
    real = Path(os.path.realpath(path))
    return real.name if real.parent.name == "blobs" and _SHA256.fullmatch(real.name) else None


def _snapshot_of(path: Path) -> Path:
    """The ``snapshots/<commit>`` folder holding ``path`` (a file of a snapshot, not followed into blobs/)."""
    parts = path.parts
    i = len(parts) - 1 - parts[::-1].index("snapshots")
    return Path(*parts[:i + 2])


def download(ref: HubRef, trust_remote_code: bool = False) -> HubModel:
    """Fetch (or find in the cache when offline) what loading ``ref`` needs; errors name what is missing."""
    from huggingface_hub import hf_hub_download, snapshot_download
    ref = _full_commit(ref)
    with _hub_errors(ref):
        if ref.filename:
            path = Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision))
            return HubModel(ref, path, _snapshot_of(path).name)
        code = ["*.py"] if trust_remote_code else []
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision,
                                        allow_patterns=_CONFIG_TOKENIZER + _SAFETENSORS + code))
        if not weight_files(folder):  # older repos: PyTorch .bin weights
            folder = Path(snapshot_download(ref.repo_id, revision=ref.revision,
                                            allow_patterns=_CONFIG_TOKENIZER + _BIN + code))
    model = HubModel(ref, folder, folder.name)
    if not (folder / "config.json").is_file() or not model.weight_files():
        ggufs = [f for f in _repo_files(ref, folder) if f.endswith(".gguf")]
        hint = (f"; it holds GGUF files: pick one with {ref.repo_id}/FILE.gguf or --gguf-file FILE "
                f"({', '.join(ggufs[:8])})") if ggufs else ""
        raise HubModelNotFoundError(f"hub repo {ref.spec} (commit {folder.name[:12]}) has no config.json and "
                                    f"weights (model*.safetensors / pytorch_model*.bin){hint}")
    return model


def _repo_files(ref: HubRef, snapshot: Optional[Path]) -> List[str]:
    """Files of the repo at ``ref``: the Hub's listing (online), its cached tree listing, else what the cached
    snapshot holds."""
    from huggingface_hub import constants
    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi
            return sorted(HfApi().list_repo_files(ref.repo_id, revision=ref.revision))
        except Exception:
            pass
    try:
        from huggingface_hub import get_cached_repo_tree
        commit = snapshot.name if snapshot is not None else ref.revision
        return sorted(f.path for f in get_cached_repo_tree(ref.repo_id, revision=commit))
    except Exception:
        pass
    if snapshot is None or not snapshot.is_dir():
        return []
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _cache_root() -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _offline_note() -> str:
    from huggingface_hub import constants
    where = f"hub cache {_cache_root()}"
    return f"{where}, HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else f"{where}; the Hub could not be reached"


def _cached_snapshot(ref: HubRef) -> Optional[Path]:
    """Cached snapshot folder of ref's revision, or None."""
    from huggingface_hub.constants import REPO_ID_SEPARATOR
    repo_dir = _cache_root() / ("models" + REPO_ID_SEPARATOR + ref.repo_id.replace("/", REPO_ID_SEPARATOR))
    rev = ref.revision or "main"
    ref_file = repo_dir / "refs" / rev
    commit = ref_file.read_text().strip() if ref_file.is_file() else rev
    snap = repo_dir / "snapshots" / commit
    return snap if snap.is_dir() else None


def _full_commit(ref: HubRef) -> HubRef:
    """A short commit sha (7-39 hex digits, as the cached listing in messages shows them) -> the full sha of the one
    cached snapshot starting with it; anything else unchanged."""
    if not ref.revision or not re.fullmatch(r"[0-9a-f]{7,39}", ref.revision):
        return ref
    from huggingface_hub.constants import REPO_ID_SEPARATOR
    snaps = _cache_root() / ("models" + REPO_ID_SEPARATOR + ref.repo_id.replace("/", REPO_ID_SEPARATOR)) / "snapshots"
    hits = [p.name for p in snaps.glob(f"{ref.revision}*")] if snaps.is_dir() else []
    return dataclasses.replace(ref, revision=hits[0]) if len(hits) == 1 else ref


def _not_cached(ref: HubRef) -> HubModelNotFoundError:
    """The clearest reason why ``ref`` is not in the local hub cache."""
    from huggingface_hub.constants import REPO_ID_SEPARATOR
    repo_dir = _cache_root() / ("models" + REPO_ID_SEPARATOR + ref.repo_id.replace("/", REPO_ID_SEPARATOR))
    if not repo_dir.is_dir():
        return HubModelNotFoundError(f"hub repo {ref.repo_id!r} is not cached ({_offline_note()}): download it "
                                     "once online, or give a local folder")
    snap = _cached_snapshot(ref)
    if snap is None:
        refs = repo_dir / "refs"
        have = [f"{p.name} -> {p.read_text().strip()[:12]}" for p in sorted(refs.iterdir())] if refs.is_dir() else []
        snaps = [p.name[:12] for p in sorted((repo_dir / "snapshots").glob("*"))]
        return HubModelNotFoundError(f"revision {ref.revision or 'main'!r} of {ref.repo_id} is not cached "
                                     f"({_offline_note()}; cached: {', '.join(have + snaps) or 'nothing'})")
    ggufs = [f for f in _repo_files(ref, snap) if f.endswith(".gguf")]
    return HubModelNotFoundError(f"{ref.filename!r} is not in {ref.repo_id}@{snap.name[:12]} ({_offline_note()}; "
                                 f"GGUF files there: {', '.join(ggufs) or 'none'})")


@contextlib.contextmanager
def _hub_errors(ref: HubRef):
    """huggingface_hub errors -> one-line HubModelNotFoundError (FileNotFoundError) naming what is missing."""
    from huggingface_hub import errors
    try:
        yield
    except errors.RevisionNotFoundError:
        raise HubModelNotFoundError(f"revision {ref.revision!r} does not exist in hub repo {ref.repo_id}") from None
    except errors.RepositoryNotFoundError:  # also gated / private without a token
        raise HubModelNotFoundError(f"hub repo {ref.repo_id!r} not found (private or gated? log in with "
                                    "`hf auth login` or set HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError:  # offline / unreachable, and not in the cache
        raise _not_cached(ref) from None
    except errors.EntryNotFoundError:  # the file is not in the repo at that revision
        ggufs = [f for f in _repo_files(ref, _cached_snapshot(ref)) if f.endswith(".gguf")]
        raise HubModelNotFoundError(f"{ref.filename!r} is not in hub repo {ref.repo_id}@{ref.revision or 'main'}"
                                    + (f" (GGUF files there: {', '.join(ggufs)})" if ggufs else "")) from None
    except errors.HfHubHTTPError as e:
        raise HubModelNotFoundError(f"hub repo {ref.spec}: {str(e).splitlines()[0]}") from None
