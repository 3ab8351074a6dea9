"""Structured-concurrency helpers shared by the server, the client and the bridges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["unwrap_single_error"]


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """A nursery wraps even a single error in an exception group: raise that one as it was, so callers
    can catch ConnectError, SinkError ... directly. Errors all of one type (two tasks that saw the same
    dead link) count as one: the first is raised."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = group.exceptions
        first = errors[0]
        if not isinstance(first, BaseExceptionGroup) and all(type(e) is type(first) for e in errors):
            raise first from None
        raise
