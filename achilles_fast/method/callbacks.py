"""The one callback the method runs between two forward passes: before each Stage 1 chunk (the clean forward
included) and each Stage 2 evaluation forward.

A caller that owns the process's resources sets it for a block (``calling_between_forwards``): a sweep worker
resizes its threads to its share of the idle cores there (``threads.CoreShare.rebalance``). The method never knows
who set it; outside such a block nothing runs. The callback is context-local (``contextvars``): it applies to the
forwards of the thread (or task) that set it.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

_between: contextvars.ContextVar[Optional[Callable[[], None]]] = contextvars.ContextVar("between_forwards",
                                                                                        default=None)


def between_forwards() -> None:
    """Called by the method right before each forward pass: runs the callback set for this context, if any."""
    fn = _between.get()
    if fn is not None:
        fn()


@contextlib.contextmanager
def calling_between_forwards(fn: Optional[Callable[[], None]]) -> Iterator[None]:
    """Run ``fn()`` between the method's forwards inside the block (None: nothing); the previous callback is back
    afterwards, whatever happens."""
    token = _between.set(fn)
    try:
        yield
    finally:
        _between.reset(token)
