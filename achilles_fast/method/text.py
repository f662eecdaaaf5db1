"""Texts and tokenization: the default passage, token-count checks, evaluation windows, JSON-lines corpora."""
from __future__ import annotations

import gzip
import json
import warnings
import zlib
from typing import List, Optional, Sequence, Tuple

import torch

from ..utils import positive_int

# Public domain: Lewis Carroll, "Alice's Adventures in Wonderland" (1865), opening paragraphs.
DEFAULT_TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, \"and what is the use of a book,\" thought Alice \"without pictures or conversations?\" So she was "
    "considering in her own mind (as well as she could, for the hot day made her feel very sleepy and stupid), "
    "whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the "
    "daisies, when suddenly a White Rabbit with pink eyes ran close by her."
)

MIN_TOKENS = 2  # fewer: no next-token loss at all
WARN_TOKENS = 10  # fewer: rankings are unstable


class TextTooShortError(ValueError):
    pass


def model_context(model) -> Optional[int]:
    """The longest sequence the model was built for (``max_position_embeddings`` and its aliases; the text config
    of multimodal models), or None when the config does not say."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def tokenize(tokenizer, text: Optional[str], max_tokens: int = 512, what: str = "text",
             context: Optional[int] = None, warn_short: bool = True) -> torch.Tensor:
    """text -> input ids [T] (tokenizer defaults for special tokens), truncated to ``max_tokens``.

    Raises on a text that is not a str, empty, or fewer than 2 tokens; warns when truncating and (``warn_short``,
    for rankings) under 10 tokens. ``context``: the model's context length (``model_context``): a text longer than
    it is cut to it with a warning, whatever ``max_tokens`` says.
    """
    if text is None:
        text = DEFAULT_TEXT
    if not isinstance(text, str):
        hint = " (decode it first: text.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise TypeError(f"the {what} must be a str, got {type(text).__name__}{hint}")
    if not text.strip():
        raise TextTooShortError(f"the {what} is empty")
    if max_tokens < MIN_TOKENS:
        raise ValueError(f"max_tokens must be >= {MIN_TOKENS}, got {max_tokens}")
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    if context is not None and context < max_tokens and ids.numel() > context:
        warnings.warn(f"{what} has {ids.numel()} tokens and max_tokens={max_tokens} exceeds the model's context of "
                      f"{context} tokens; using the first {context}", stacklevel=3)
        ids = ids[:context]
    elif ids.numel() > max_tokens:
        warnings.warn(f"{what} has {ids.numel()} tokens; using the first max_tokens={max_tokens}", stacklevel=3)
        ids = ids[:max_tokens]
    n = int(ids.numel())
    if n < MIN_TOKENS:
        raise TextTooShortError(f"the {what} has {n} token(s); at least {MIN_TOKENS} are needed")
    if warn_short and n < WARN_TOKENS:
        warnings.warn(f"the {what} has only {n} tokens (< {WARN_TOKENS}): rankings will be unstable", stacklevel=3)
    return ids


def text_ids(model, tokenizer, text: Optional[str], eval_text: Optional[str],
             max_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scoring text's ids [T] and the evaluation text's [T'] (the same tensor when ``eval_text`` is None), each
    cut to ``max_tokens`` and to the model's context (``model_context``): the one tokenization of the texts a ranking
    is scored and searched on (the method, the baselines and the study)."""
    ctx = model_context(model)
    ids = tokenize(tokenizer, text, max_tokens, "text", ctx)
    eval_ids = ids if eval_text is None else tokenize(tokenizer, eval_text, max_tokens, "eval_text", ctx)
    return ids, eval_ids


def windows(ids: torch.Tensor, window: int, max_windows: Optional[int] = None, bos_id: Optional[int] = None):
    """Split a token stream [N] into non-overlapping windows of ``window`` tokens -> [W, window] ([W, window+1] when
    prefixed with ``bos_id``)."""
    body = window
    n = ids.numel() // body
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise TextTooShortError(f"corpus has {ids.numel()} tokens, fewer than one window of {window}")
    w = ids[: n * body].view(n, body)
    if bos_id is not None:
        w = torch.cat([torch.full((n, 1), bos_id, dtype=w.dtype), w], dim=1)
    return w


def check_windows(window, max_windows: Optional[int] = None) -> None:
    """``window`` an integer >= 2, ``max_windows`` None or an integer >= 1 (ValueError otherwise)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < MIN_TOKENS:
        raise ValueError(f"window must be an integer >= {MIN_TOKENS}, got {window!r}")
    if max_windows is not None:
        positive_int(max_windows, "max_windows")


def corpus_windows(tokenizer, corpus: str, window: int = 256, max_windows: Optional[int] = None,
                   bos: bool = True, context: Optional[int] = None) -> torch.Tensor:
    """Tokenize a whole corpus (no special tokens) and cut it into non-overlapping windows of ``window`` tokens
    ([W, window], or [W, window + 1] with a BOS prefix). ``context``: the model's context length; a longer window
    is refused (a window has an exact size, so it is not cut silently)."""
    check_windows(window, max_windows)
    if context is not None and window + bool(bos) > context:
        raise ValueError(f"window {window}{' + BOS' if bos else ''} exceeds the model's context of {context} tokens")
    enc = tokenizer(corpus, return_tensors="pt", add_special_tokens=False)
    ids = enc["input_ids"][0]
    bos_id = getattr(tokenizer, "bos_token_id", None) if bos else None
    return windows(ids, window, max_windows=max_windows, bos_id=bos_id)


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")  # one JSON object per line (C4 shards are *.json.gz)


class CorpusFormatError(ValueError):
    pass


def is_jsonl(path: str) -> bool:
    return str(path).lower().endswith(JSONL_SUFFIXES)


def read_jsonl_texts(path: str, field: str = "text") -> List[str]:
    """The ``field`` string of every record of a JSON-lines file (blank lines skipped; ``.gz`` read compressed).

    Raises ``CorpusFormatError`` (a ValueError) naming the line on a line that is not a JSON object, lacks
    ``field`` or holds a non-string there, and when the file holds no record.
    """
    try:
        texts = _read_jsonl(path, field)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorpusFormatError(f"{path}: truncated or corrupt compressed file ({e or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise CorpusFormatError(f"{path}: not UTF-8 text (byte {e.start} of the decompressed text)") from None
    if not texts:
        raise CorpusFormatError(f"{path}: no records (empty corpus)")
    return texts


def _read_jsonl(path: str, field: str) -> List[str]:
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    texts: List[str] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusFormatError(f"{path}: line {no} is not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise CorpusFormatError(f"{path}: line {no} is not a JSON object")
            if field not in rec:
                raise CorpusFormatError(f"{path}: line {no} has no field {field!r} (fields: "
                                        f"{', '.join(map(repr, list(rec)[:8])) or 'none'}; choose one with --field)")
            if not isinstance(rec[field], str):
                raise CorpusFormatError(f"{path}: line {no}: field {field!r} is {type(rec[field]).__name__}, "
                                        "not a string")
            texts.append(rec[field])
    return texts


CHARS_PER_TOKEN = 8  # a first guess: the prefix tokenised holds max_tokens * this many characters, doubled as needed
CUT_MARGIN = 16  # tokens past max_tokens that must exist in a cut prefix, so the cut cannot change the ones kept


def _first_tokens(tokenizer, text: str, max_tokens: int) -> torch.Tensor:
    """The first ``max_tokens`` ids [<= max_tokens] of ``text``, tokenising only a prefix of it: max_tokens worth of
    characters, doubled until the prefix holds ``CUT_MARGIN`` tokens more than needed (or is the whole text), so
    memory stays bounded whatever the length of the text."""
    n = max_tokens * CHARS_PER_TOKEN
    while True:
        ids = tokenizer(text[:n], return_tensors="pt")["input_ids"][0]
        if n >= len(text) or ids.numel() >= max_tokens + CUT_MARGIN:
            return ids[:max_tokens]
        n *= 2


def sample_ids(tokenizer, texts: Sequence[str], max_tokens: int = 512) -> Tuple[List[torch.Tensor], int]:
    """Each text on its own (tokenizer defaults for special tokens), truncated to its first ``max_tokens`` tokens,
    like the paper's C4 evaluator. -> (ids [T_i] of every sample with T_i >= 2, number of samples skipped)."""
    if max_tokens < MIN_TOKENS:
        raise ValueError(f"max_tokens must be >= {MIN_TOKENS}, got {max_tokens}")
    out: List[torch.Tensor] = []
    for text in texts:
        ids = _first_tokens(tokenizer, text, max_tokens)
        if ids.numel() >= MIN_TOKENS:
            out.append(ids)
    if not out:
        raise TextTooShortError(f"no sample of the corpus has {MIN_TOKENS} tokens or more")
    return out, len(texts) - len(out)
