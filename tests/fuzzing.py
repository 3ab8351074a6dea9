"""Input mutation shared by the hostile-input test and the long fuzz campaign (scripts/fuzz_broker.py)."""

from __future__ import annotations


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """``data`` with each edit (kind, position, byte) applied: 0 overwrites, 1 inserts, 2 deletes."""
    buffer = bytearray(data)
    for kind, position, value in edits:
        if not buffer:
            break
        index = position % len(buffer)
        if kind == 0:
            buffer[index] = value
        elif kind == 1:
            buffer.insert(index, value)
        else:
            del buffer[index]
    return bytes(buffer)
