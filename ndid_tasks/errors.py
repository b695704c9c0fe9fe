"""Which failures a retry can fix and which it cannot.

The engine raises a :class:`PermanentError` for anything that fails the same way every time:
a bad setting, missing or wrong weights, an unusable calibration or whitening. The DAG layer turns
it into a failed task at once (no retries); everything else (S3, Milvus, network) is retried with
backoff. Problems of one object never raise at all: they become that object's error record.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help: the message says what to fix."""


def is_permanent(exc: BaseException) -> bool:
    """True for a PermanentError anywhere in the exception's cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PermanentError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
